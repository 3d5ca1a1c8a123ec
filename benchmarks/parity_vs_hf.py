"""Logit parity of marco-jax against HF transformers on a real checkpoint.

    python benchmarks/parity_vs_hf.py --hf-dir HF_DIR [--gguf FILE.gguf] \
        --text-file ../shared/data/marco/CoT_demo.json --tokens 512 [--dtype bfloat16] \
        --json-out results/parity.json

Loads the same text into both (CPU), reports max |delta logit|, max |delta log-prob|
and top-1 agreement over every position; with --gguf, also for our GGUF import
against HF (the demo HF checkpoint is that GGUF, dequantized by transformers). With
--dtype bfloat16 both run in bfloat16 (weights and compute, as on an accelerator),
and each is also compared with HF in float32, so the rounding of bfloat16 itself
shows beside the difference between the two. The peer, HF transformers, runs in
the same process.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from report import report

from marco_jax.loading import load


def read_text(path: pathlib.Path) -> str:
    """Plain text, or the responses of a JSON list of {instruction, response} records."""
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return "\n\n".join(r["instruction"] + "\n" + r["response"] for r in json.loads(raw))
    return raw


def compare(ours_btv: np.ndarray, ref_btv: np.ndarray) -> dict:
    ours_lp = jax.nn.log_softmax(jnp.asarray(ours_btv), -1)
    ref_lp = jax.nn.log_softmax(jnp.asarray(ref_btv), -1)
    return {
        "max_abs_dlogit": float(np.abs(ours_btv - ref_btv).max()),
        "max_abs_dlogprob": float(jnp.abs(ours_lp - ref_lp).max()),
        "top1_agreement": float((ours_btv.argmax(-1) == ref_btv.argmax(-1)).mean()),
    }


def our_logits(path, tokens: np.ndarray, dtype: str) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    model = load(path, param_dtype=dtype, compute_dtype=dtype).model
    positions = jnp.arange(tokens.shape[1])[None]
    logits = model(jnp.asarray(tokens), positions)
    return np.asarray(logits, np.float32), time.perf_counter() - start


def hf_logits(hf_dir: pathlib.Path, tokens: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).eval()
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf-dir", required=True, type=pathlib.Path)
    parser.add_argument("--gguf", type=pathlib.Path)
    parser.add_argument("--text-file", required=True, type=pathlib.Path)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--json-out", type=pathlib.Path)
    args = parser.parse_args()

    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(args.hf_dir)
    tokens = np.asarray([tokenizer.encode(read_text(args.text_file))[:args.tokens]], np.int32)
    exact = hf_logits(args.hf_dir, tokens, torch.float32)
    ref = exact if args.dtype == "float32" else hf_logits(args.hf_dir, tokens, torch.bfloat16)

    results = {"num_tokens": int(tokens.shape[1]), "device": jax.devices()[0].platform,
               "dtype": args.dtype}
    for name, path in (("hf_dir", args.hf_dir), ("gguf", args.gguf)):
        if path is None:
            continue
        logits, seconds = our_logits(path, tokens, args.dtype)
        results[name] = compare(logits, ref) | {"seconds": seconds}
        if args.dtype != "float32":
            results[f"{name}_vs_hf_float32"] = compare(logits, exact)
    if args.dtype != "float32":
        results["hf_vs_hf_float32"] = compare(ref, exact)
    report(results, args.json_out)


if __name__ == "__main__":
    main()
