"""Decode throughput of our inference engine against HF transformers' generate, same checkpoint.

    python benchmarks/engine_vs_hf.py --hf-dir HF_DIR --mgsm ../shared/data/mgsm/mgsm_en.tsv \
        --batch-sizes 1,8,32 --new-tokens 64 --json-out results/engine_vs_hf.json

Both sides get the same token ids (the first B MGSM questions in ChatML), sample
64 new tokens per row at temperature 0.7 / top-p 0.95 and return the top-5
log-probabilities of every step (HF: ``output_logits`` then log_softmax/topk).
EOS is disabled on both sides so every row makes all 64 tokens. Each (side,
batch size) runs in its own child process, so its peak RSS is its own; a warm-up
call comes first (our compile time is reported separately). Decode tokens/s =
rows * (new_tokens - 1) / (time after the prefill); HF's prefill time is a
1-token generate. Our engine runs with one slot per row, so both sides decode
the same batch. Also reported: the machine's matmul peak and memory bandwidth
(measured here) and what fraction of them each run reached.

``--greedy-check N`` also compares greedy output token for token with HF on N
prompts (HF one prompt at a time, ours one batch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

from report import machine_peaks, report

SETTINGS = dict(temperature=0.7, top_p=0.95)


def chat_ids(hf_dir: pathlib.Path, mgsm: pathlib.Path, count: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    from marco_jax.prompts import chat_prompt
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    questions = [line.split("\t")[0] for line in mgsm.read_text(encoding="utf-8").splitlines()]
    if len(questions) < count:
        raise SystemExit(f"{mgsm} has {len(questions)} questions, need {count}")
    return [tokenizer.encode(chat_prompt(q), add_special_tokens=False) for q in questions[:count]]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def our_engine(hf_dir: pathlib.Path, rows: int, length: int):
    """The engine with one slot per row and a pool just large enough; EOS off."""
    from marco_jax.engine.engine import Engine, EngineConfig
    from marco_jax.loading import load
    loaded = load(hf_dir, with_tokenizer=False)
    unused = loaded.cfg.vocab_size - 1  # a padding id the model never samples: EOS off
    max_len = 1 << (length - 1).bit_length()
    config = EngineConfig(slots=rows, max_model_len=max_len, top_logprobs=5)
    return Engine(loaded.model, eos_ids=(unused,), config=config)


def run_ours(hf_dir: pathlib.Path, ids: list[list[int]], new_tokens: int, seed: int) -> dict:
    engine = our_engine(hf_dir, len(ids), max(map(len, ids)) + new_tokens)
    engine.warmup()
    engine.generate(ids, new_tokens, seed=seed, **SETTINGS)
    before = dataclasses.replace(engine.stats)
    done = engine.generate(ids, new_tokens, seed=seed + 100, **SETTINGS)
    assert all(len(c.tokens) == new_tokens for c in done)
    return {"compile_s": before.compile_s,
            "prefill_s": engine.stats.prefill_s - before.prefill_s,
            "decode_s": engine.stats.decode_s - before.decode_s,
            "compilations": engine.num_programs,
            "mean_confidence": float(np.mean([c.confidence for c in done]))}


def run_hf(hf_dir: pathlib.Path, ids: list[list[int]], new_tokens: int, seed: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    longest = max(len(x) for x in ids)
    tokens = torch.tensor([[0] * (longest - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (longest - len(x)) + [1] * len(x) for x in ids])

    def generate(n: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(tokens, attention_mask=mask, max_new_tokens=n, do_sample=True,
                                 top_k=0, eos_token_id=None, pad_token_id=0, output_logits=True,
                                 return_dict_in_generate=True, **SETTINGS)
            torch.log_softmax(torch.stack(out.logits, 1), -1).topk(5)
        assert out.sequences.shape[1] == longest + n
        return time.perf_counter() - start

    model.generation_config.eos_token_id = None
    generate(2)  # warm-up
    prefill_s = generate(1)
    total_s = generate(new_tokens)
    return {"compile_s": 0.0, "prefill_s": prefill_s, "decode_s": total_s - prefill_s}


def child(args: argparse.Namespace) -> None:
    ids = chat_ids(args.hf_dir, args.mgsm, args.batch)
    run = run_ours if args.child == "ours" else run_hf
    result = run(args.hf_dir, ids, args.new_tokens, args.seed)
    result.update(batch=args.batch, prompt_tokens=sum(map(len, ids)),
                  decode_tokens_per_s=args.batch * (args.new_tokens - 1) / result["decode_s"],
                  peak_rss_gb=peak_rss_gb())
    print(json.dumps(result))


def per_token_costs(hf_dir: pathlib.Path, context: int) -> dict:
    """FLOPs and weight bytes one decode token needs (fp32; embedding rows are gathered)."""
    from marco_jax.model_config import load_hf_config
    cfg = load_hf_config(hf_dir / "config.json")
    d, f, l = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    kv = cfg.num_kv_heads * cfg.head_dim
    matmul_params = l * (2 * d * d + 2 * d * kv + 3 * d * f) + cfg.vocab_size * d
    attention_flops = l * 4 * context * cfg.num_heads * cfg.head_dim
    return {"flops": 2 * matmul_params + attention_flops, "weight_bytes": 4 * matmul_params}


def greedy_check(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    ids = chat_ids(args.hf_dir, args.mgsm, args.greedy_check)
    engine = our_engine(args.hf_dir, len(ids), max(map(len, ids)) + args.new_tokens)
    ours = [c.tokens for c in engine.generate(ids, args.new_tokens)]
    del engine
    model = AutoModelForCausalLM.from_pretrained(str(args.hf_dir), dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    equal = []
    for i, prompt in enumerate(ids):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=args.new_tokens,
                                 do_sample=False, eos_token_id=None, pad_token_id=0)
        theirs = out[0, len(prompt):].numpy()
        same = np.asarray(ours[i]) == theirs
        equal.append(int(same.all()) if same.all() else f"first difference at {int(np.argmin(same))}")
    return {"prompts": len(ids), "new_tokens": args.new_tokens,
            "identical": sum(1 for e in equal if e == 1), "per_prompt": equal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf-dir", required=True, type=pathlib.Path)
    parser.add_argument("--mgsm", required=True, type=pathlib.Path, help="mgsm_en.tsv")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--greedy-check", type=int, default=0, metavar="N")
    parser.add_argument("--json-out", type=pathlib.Path)
    parser.add_argument("--child", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    results: dict = {"settings": {**SETTINGS, "new_tokens": args.new_tokens, "top_logprobs": 5,
                                  "dtype": "float32"},
                     "machine": machine_peaks(), "runs": []}
    peaks = results["machine"]
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        row = {"batch": batch}
        for side in ("ours", "hf"):
            cmd = [sys.executable, __file__, "--child", side, "--batch", str(batch),
                   "--hf-dir", str(args.hf_dir), "--mgsm", str(args.mgsm),
                   "--new-tokens", str(args.new_tokens), "--seed", str(args.seed)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            run = json.loads(out.strip().splitlines()[-1])
            context = run["prompt_tokens"] / batch + args.new_tokens / 2
            costs = per_token_costs(args.hf_dir, int(context))
            rate = run["decode_tokens_per_s"]
            run["fraction_of_matmul_peak"] = rate * costs["flops"] / 1e9 / peaks["matmul_gflops"]
            run["fraction_of_bandwidth"] = (rate / batch * costs["weight_bytes"] / 1e9
                                            / peaks["read_gb_per_s"])
            row[side] = run
            print(side, batch, json.dumps(run), file=sys.stderr, flush=True)
        row["speedup_decode"] = row["ours"]["decode_tokens_per_s"] / row["hf"]["decode_tokens_per_s"]
        results["runs"].append(row)
    if args.greedy_check:
        results["greedy_check"] = greedy_check(args)
    report(results, args.json_out)


if __name__ == "__main__":
    main()
