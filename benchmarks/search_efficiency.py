"""How full the search keeps the device: calls, rows per call, tokens/s vs the bare sampler.

    python benchmarks/search_efficiency.py --model HF_DIR --mgsm ../shared/data/mgsm/mgsm_en.tsv \
        --problems 8 --config mcts-mini64 --iterations 3 --call-tokens 128 \
        --json-out results/search_efficiency.json

Runs P problems' trees in lock-step (warm-up run first, so compile time is
excluded) and reports device calls, rows per call, prefilled tokens per
generated token, and generated tokens/s over the whole search (host work
included). The peer, measured in the same run, is the bare sampler at the
search's batch size (P x children rows of the same prompts, the same token
budget per row): search tokens/s / sampler tokens/s is the efficiency.
"""

from __future__ import annotations

import argparse
import pathlib
import time

from report import report

from marco_jax import stops
from marco_jax.loading import load
from marco_jax.sampler import Sampler
from marco_jax.search import job as job_lib
from marco_jax.search.config import load_job_config
from marco_jax.search.engine import Search
from marco_jax.search.runner import wrap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--mgsm", required=True, type=pathlib.Path)
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--config", default="mcts-mini64")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--call-tokens", type=int, default=128)
    parser.add_argument("--json-out", type=pathlib.Path)
    args = parser.parse_args()

    job = load_job_config(args.config, iterations=args.iterations, call_tokens=args.call_tokens)
    loaded = load(args.model)
    tokenizer = loaded.tokenizer
    questions = job_lib.read_problems(args.mgsm)[:args.problems]
    prompts = [tokenizer.encode(wrap(job.template, q["question"]), add_special_tokens=False)
               for q in questions]
    table = stops.build_stop_table(tokenizer, job.stop, loaded.cfg.vocab_size)
    sampler = Sampler(loaded.model, loaded.eos_ids, stop_table=table)

    def timed_search() -> tuple[Search, float]:
        search = Search(sampler, tokenizer, job.search)
        start = time.perf_counter()
        search.run(prompts)
        return search, time.perf_counter() - start

    timed_search()  # warm-up: compiles every bucket the search uses
    search, search_s = timed_search()

    rows = [p for p in prompts for _ in range(job.search.children)]
    settings = dict(temperature=job.search.temperature, top_p=job.search.top_p, seed=0)
    sampler.generate(rows, args.call_tokens, **settings)  # warm-up
    start = time.perf_counter()
    gen = sampler.generate(rows, args.call_tokens, **settings)
    sampler_s = time.perf_counter() - start

    search_rate = search.generated_tokens / search_s
    sampler_rate = gen.timing.generated_tokens / sampler_s
    report({
        "config": job.name, "problems": len(prompts), "iterations": args.iterations,
        "children": job.search.children, "call_tokens": args.call_tokens,
        "search": {"seconds": search_s, "device_calls": search.device_calls,
                   "rows_per_call": search.rows_per_call,
                   "generated_tokens": search.generated_tokens,
                   "prefilled_tokens": search.prefilled_tokens,
                   "prefilled_per_generated": search.prefilled_tokens / search.generated_tokens,
                   "generated_tokens_per_s": search_rate},
        "bare_sampler": {"rows": len(rows), "seconds": sampler_s,
                         "generated_tokens": gen.timing.generated_tokens,
                         "prefilled_tokens": gen.timing.prompt_tokens,
                         "generated_tokens_per_s": sampler_rate},
        "efficiency": search_rate / sampler_rate,
    }, args.json_out)


if __name__ == "__main__":
    main()
