"""Continuous-batching engine against the bucketed sampler, both in the same run.

    python benchmarks/engine_vs_sampler.py --model HF_DIR --mgsm ../shared/data/mgsm/mgsm_en.tsv \
        --requests 256 --slots 64 --scenarios mixed,uniform64 \
        --json-out benchmarks/results/engine_vs_sampler.json

Why: the old sampler (``benchmarks/legacy_sampler.py``) decodes every batch
until its slowest row stops, so rows that finish early (EOS, a small token
budget) leave their slot idle; the engine refills a freed slot with the next
waiting request (issue 13). This measures what that buys on the same model,
prompts and settings.

``mixed``: N MGSM chat prompts (cycled), token budgets spread uniformly over
16..512 (shuffled with a fixed seed), greedy by default. The engine takes all N
through ``--slots`` slots; the sampler takes them in batches of ``--slots`` in
the same order. ``uniform64``: 64 new tokens per row at batch 1 and 32 (EOS
off, so every row makes all 64), engine slots = batch. Reported per side: wall
seconds without compilation, generated tokens, tokens/s, slot utilisation
(kept tokens / slot-steps; sampler: rows padded to the batch bucket x steps
its decode loop ran), compile count and seconds, prefill seconds and peak RSS
(process-wide: use ``--only engine`` / ``--only sampler`` in separate
processes to get each side's own). Compile time is excluded from wall time:
the engine compiles everything in ``warmup()``; the sampler compiles inside
its calls and its own measured compile seconds are subtracted (in
``uniform64`` both sides also make one untimed warm-up call on other prompts).
``identical_outputs``: among mixed requests both sides ended for the same
reason, the fraction with token-identical outputs (a sanity check).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import pathlib
import resource
import sys
import time

import jax
import numpy as np

from legacy_sampler import BATCH_BUCKETS, Sampler  # the old bucketed path, kept as the peer
from report import report

from marco_jax.engine.engine import Engine, EngineConfig
from marco_jax.engine.kv_pages import bytes_per_block
from marco_jax.loading import LoadedModel, load
from marco_jax.search.problems import read_problems
from marco_jax.search.runner import wrap

BUDGET_RANGE = (16, 512)
UNIFORM_TOKENS = 64
UNIFORM_BATCHES = (1, 32)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def batch_bucket(rows: int) -> int:
    return next(b for b in BATCH_BUCKETS if b >= rows)


def kv_cache_gb(loaded: LoadedModel, args: argparse.Namespace, slots: int) -> float:
    """``--kv-cache-gb``, else room for every slot at ``max_model_len`` (+ the scratch block)."""
    if args.kv_cache_gb is not None:
        return args.kv_cache_gb
    blocks = slots * math.ceil(args.max_model_len / args.block_size) + 1
    return blocks * bytes_per_block(loaded.cfg, args.block_size) / 2 ** 30


def run_engine(loaded: LoadedModel, args: argparse.Namespace, slots: int, eos_ids,
               prompts: list[list[int]], budgets: list[int], seed: int,
               warm_prompts: list[list[int]] | None = None) -> tuple[dict, list]:
    config = EngineConfig(slots=slots, decode_steps=args.decode_steps, block_size=args.block_size,
                          max_model_len=args.max_model_len,
                          kv_cache_gb=kv_cache_gb(loaded, args, slots), policy=args.policy)
    engine = Engine(loaded.model, eos_ids, config)
    programs = engine.warmup()
    if warm_prompts:
        engine.generate(warm_prompts, budgets, temperature=args.temperature, seed=seed + 10_000)
    before = dataclasses.asdict(engine.stats)
    start = time.perf_counter()
    done = engine.generate(prompts, budgets, temperature=args.temperature, seed=seed)
    wall = time.perf_counter() - start
    delta = {k: v - before[k] for k, v in dataclasses.asdict(engine.stats).items()}
    tokens = sum(len(c.tokens) for c in done)
    assert tokens == delta["kept_tokens"], (tokens, delta["kept_tokens"])
    result = {
        "policy": args.policy, "slots": slots, "kv_cache_gb": config.kv_cache_gb,
        "wall_s": wall, "generated_tokens": tokens, "tokens_per_s": tokens / wall,
        "slot_utilisation": tokens / delta["slot_steps"], "decode_calls": delta["decode_calls"],
        "prefill_calls": delta["prefill_calls"], "prefilled_tokens": delta["prefilled_tokens"],
        "cached_tokens": delta["cached_tokens"], "prefill_s": delta["prefill_s"],
        "decode_s": delta["decode_s"], "compilations": engine.num_programs,
        "compile_s": engine.stats.compile_s, "warmup_programs": programs,
        "compiled_after_warmup": engine.num_programs - programs,
        "finish_reasons": count_reasons(c.finish_reason for c in done),
        "peak_rss_gb_so_far": peak_rss_gb()}
    return result, [(c.tokens, c.finish_reason) for c in done]


def run_sampler(loaded: LoadedModel, args: argparse.Namespace, batch: int, eos_ids,
                prompts: list[list[int]], budgets: list[int], seed: int,
                warm_prompts: list[list[int]] | None = None) -> tuple[dict, list]:
    sampler = Sampler(loaded.model, eos_ids)

    def call(start: int, rows: list[list[int]], seed0: int):
        return sampler.generate(rows, budgets[start:start + len(rows)],
                                temperature=args.temperature,
                                seed=[seed0 + start + i for i in range(len(rows))])

    warm_compile_s = 0.0
    if warm_prompts:
        for i in range(0, len(warm_prompts), batch):
            warm_compile_s += call(i, warm_prompts[i:i + batch], seed + 10_000).timing.compile_s
    outputs, slot_steps, prefill_s, sampler_compile_s = [], 0, 0.0, 0.0
    reasons: list[str] = []
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        gen = call(i, prompts[i:i + batch], seed)
        sampler_compile_s += gen.timing.compile_s
        prefill_s += gen.timing.prefill_s
        slot_steps += batch_bucket(len(gen.lengths)) * int(gen.lengths.max())
        outputs += [(gen.row_tokens(r), gen.finish_reasons[r]) for r in range(len(gen.lengths))]
        reasons += gen.finish_reasons
    wall = time.perf_counter() - start - sampler_compile_s
    tokens = sum(len(t) for t, _ in outputs)
    result = {
        "batch": batch, "wall_s": wall, "generated_tokens": tokens, "tokens_per_s": tokens / wall,
        "slot_utilisation": tokens / slot_steps, "calls": math.ceil(len(prompts) / batch),
        "prefill_s": prefill_s, "compilations": sampler.num_compilations,
        "compile_s": warm_compile_s + sampler_compile_s, "finish_reasons": count_reasons(reasons),
        "peak_rss_gb_so_far": peak_rss_gb()}
    return result, outputs


def count_reasons(reasons) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in reasons:
        counts[r] = counts.get(r, 0) + 1
    return counts


def compare(row: dict, outs: dict) -> None:
    """Add the engine/sampler tokens/s ratio and, given both outputs, output agreement."""
    if "engine" in row and "sampler" in row:
        row["ratio_tokens_per_s"] = row["engine"]["tokens_per_s"] / row["sampler"]["tokens_per_s"]
    if len(outs) == 2:
        same_reason = [(a, b) for (a, ra), (b, rb) in zip(outs["engine"], outs["sampler"])
                       if ra == rb]
        row["same_finish_reason"] = len(same_reason)
        row["identical_outputs"] = (sum(a == b for a, b in same_reason) / len(same_reason)
                                    if same_reason else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--mgsm", required=True, type=pathlib.Path, help="question<TAB>answer TSV")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--slots", type=int, default=64, help="engine slots = sampler batch")
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--kv-cache-gb", type=float,
                        help="default: room for slots x max-model-len tokens")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--policy", choices=["fcfs", "longest_first"], default="longest_first")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenarios", default="mixed,uniform64")
    parser.add_argument("--only", choices=["engine", "sampler", "both"], default="both")
    parser.add_argument("--json-out", type=pathlib.Path)
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    if unknown := set(scenarios) - {"mixed", "uniform64"}:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}")
    if args.slots > BATCH_BUCKETS[-1]:
        raise SystemExit(f"--slots {args.slots}: the sampler batches at most "
                         f"{BATCH_BUCKETS[-1]} rows")
    sides = ["engine", "sampler"] if args.only == "both" else [args.only]

    loaded = load(args.model, param_dtype=args.dtype, compute_dtype=args.dtype)
    questions = [p["question"] for p in read_problems(args.mgsm)]
    encoded = [loaded.tokenizer.encode(wrap("chat", q), add_special_tokens=False)
               for q in questions]
    device = jax.devices()[0]
    results: dict = {
        "date": datetime.date.today().isoformat(), "backend": jax.default_backend(),
        "device_kind": device.device_kind, "model": args.model, "dtype": args.dtype,
        "requests": args.requests, "slots": args.slots, "decode_steps": args.decode_steps,
        "block_size": args.block_size, "max_model_len": args.max_model_len,
        "kv_cache_gb": kv_cache_gb(loaded, args, args.slots), "policy": args.policy,
        "temperature": args.temperature, "sides": sides, "command": " ".join(sys.argv)}
    runners = {"engine": run_engine, "sampler": run_sampler}

    if "mixed" in scenarios:
        n = args.requests
        prompts = [encoded[i % len(encoded)] for i in range(n)]
        budgets = np.linspace(*BUDGET_RANGE, n).round().astype(int)
        budgets = np.random.default_rng(args.seed).permutation(budgets).tolist()
        row: dict = {"budgets": f"uniform {BUDGET_RANGE[0]}..{BUDGET_RANGE[1]}",
                     "budget_tokens": sum(budgets),
                     "prompt_tokens": sum(map(len, prompts))}
        outs = {}
        for side in sides:
            row[side], outs[side] = runners[side](loaded, args, args.slots, loaded.eos_ids,
                                                  prompts, budgets, args.seed)
            print("mixed", side, row[side], file=sys.stderr, flush=True)
        compare(row, outs)
        results["mixed"] = row

    if "uniform64" in scenarios:
        unused = (loaded.cfg.vocab_size - 1,)  # an id the model never samples: EOS off
        results["uniform64"] = []
        for batch in UNIFORM_BATCHES:
            prompts = [encoded[i % len(encoded)] for i in range(batch)]
            warm = [encoded[(batch + i) % len(encoded)] for i in range(batch)]
            row = {"batch": batch, "new_tokens": UNIFORM_TOKENS}
            for side in sides:
                row[side], _ = runners[side](loaded, args, batch, unused, prompts,
                                             [UNIFORM_TOKENS] * batch, args.seed, warm)
                print("uniform64", batch, side, row[side], file=sys.stderr, flush=True)
            compare(row, {})
            results["uniform64"].append(row)

    results["peak_rss_gb"] = peak_rss_gb()
    report(results, args.json_out)


if __name__ == "__main__":
    main()
