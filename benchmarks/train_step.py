"""Training throughput of our SFT step against an HF transformers + torch AdamW step.

    python benchmarks/train_step.py --batch 2 --seq-len 512 --steps 3 \
        --json-out results/train_step.json

Same model (the qwen2_05b_sft config's architecture, random weights: speed does
not depend on their values), same batch of token ids, same sequence length,
float32 on both sides (XLA:CPU and torch's CPU kernels both run bf16 matmuls
slower than fp32), no remat / gradient checkpointing on either side, AdamW with
global-norm clipping on both. Each side runs in its own child process (its own
peak RSS) with a warm-up step first (our compile time is reported separately).
MFU = tokens/s x (6 x matmul parameters + attention) / the matmul peak measured
here, in the same run.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

from report import machine_peaks, report

CONFIG = "qwen2_05b_sft"


def batch_tokens(batch: int, seq_len: int, vocab: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab, size=(batch, seq_len + 1)).astype(np.int32)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run_ours(args: argparse.Namespace) -> dict:
    import jax

    from marco_jax.train import trainer
    from marco_jax.train.config import load_train_config
    from marco_jax.train.layout import init_params

    cfg = load_train_config(CONFIG, [
        "model.compute_dtype=float32", "model.remat=none", f"data.seq_len={args.seq_len}",
        f"train.global_batch={args.batch}", "train.micro_batches=1", "mesh.fsdp=1"])
    setup = trainer.set_up(cfg, jax.devices()[:1])
    program = setup.program
    state = program.init(jax.device_put(init_params(setup.layout, 0),
                                        program.state_shardings.params))
    tokens = batch_tokens(args.batch, args.seq_len, setup.layout.cfg.vocab_size)
    ones = np.ones((1, args.batch, args.seq_len))
    batch = jax.device_put({
        "inputs": tokens[None, :, :-1], "targets": tokens[None, :, 1:],
        "loss_mask": ones.astype(np.float32), "segment_ids": ones.astype(np.int32),
        "positions": np.broadcast_to(np.arange(args.seq_len), ones.shape).astype(np.int32)},
        program.batch_shardings)
    start = time.perf_counter()
    state, metrics = program.step(state, batch)
    jax.block_until_ready(metrics)
    compile_and_first = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = program.step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return {"step_seconds": min(times), "first_step_seconds": compile_and_first,
            "loss": float(metrics["loss"]), "params": setup.layout.cfg.num_params()}


def run_hf(args: argparse.Namespace) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from marco_jax.model_config import preset

    torch.manual_seed(0)
    ours = preset("qwen2-0.5b")
    model = Qwen2ForCausalLM(Qwen2Config(**{**ours.to_hf_dict(), "torch_dtype": "float32"}))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95),
                                  weight_decay=0.0)
    tokens = torch.tensor(batch_tokens(args.batch, args.seq_len, ours.vocab_size),
                          dtype=torch.long)

    def step() -> float:
        loss = model(input_ids=tokens[:, :-1], labels=tokens[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    return {"step_seconds": min(times), "loss": loss, "torch_threads": torch.get_num_threads()}


def flops_per_token(seq_len: int) -> float:
    from marco_jax.model_config import preset
    from marco_jax.train.metrics import flops_per_token as per_token

    return per_token(preset("qwen2-0.5b"), seq_len)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (best is reported)")
    parser.add_argument("--json-out", type=pathlib.Path)
    parser.add_argument("--child", choices=["ours", "hf"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        out = run_ours(args) if args.child == "ours" else run_hf(args)
        print(json.dumps({**out, "peak_rss_gb": peak_rss_gb()}))
        return

    peaks = machine_peaks()
    tokens = args.batch * args.seq_len
    flops = flops_per_token(args.seq_len)
    results = {"settings": {"config": CONFIG, "batch": args.batch, "seq_len": args.seq_len,
                            "dtype": "float32", "remat": "none", "tokens_per_step": tokens},
               "machine": peaks}
    for side in ("ours", "hf"):
        cmd = [sys.executable, __file__, "--child", side, "--batch", str(args.batch),
               "--seq-len", str(args.seq_len), "--steps", str(args.steps)]
        run = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                        text=True).stdout.strip().splitlines()[-1])
        run["tokens_per_s"] = tokens / run["step_seconds"]
        run["mfu"] = run["tokens_per_s"] * flops / 1e9 / peaks["matmul_gflops"]
        results[side] = run
        print(side, json.dumps(run), file=sys.stderr, flush=True)
    results["speedup"] = results["ours"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
    report(results, args.json_out)


if __name__ == "__main__":
    main()
