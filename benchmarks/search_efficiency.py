"""How full the search keeps the engine: the search's tokens/s against the bare
engine replaying the very requests the search made.

    python benchmarks/search_efficiency.py --model HF_DIR --mgsm ../shared/data/mgsm/mgsm_en.tsv \
        --problems 16 --config mcts-mini64 --iterations 3 --call-tokens 128 \
        --json-out results/search_efficiency.json

The search streams P problems' trees through one engine: a tree waits for its
own children before it selects again, and the host splits, values and backs
up every continuation. The peer, measured in the same run, is a fresh engine
with the same settings given every request the search submitted (same
prompts, budgets and seeds) at once, with no tree waiting on another. Both
engines compile every program first (``warmup``), so compile time is
excluded. Efficiency = search tokens/s / bare tokens/s.
"""

from __future__ import annotations

import argparse
import pathlib
import time

from report import report

from marco_jax.engine import stops
from marco_jax.cli import enable_compilation_cache
from marco_jax.engine.engine import Engine, EngineConfig
from marco_jax.loading import load
from marco_jax.prompts import render
from marco_jax.search import problems as problems_lib
from marco_jax.search.config import load_job_config
from marco_jax.search.mcts import MCTS
from marco_jax.search.searcher import Searcher


class RecordingEngine(Engine):
    """An engine that remembers every request submitted to it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log: list[tuple[list[int], int, dict]] = []

    def submit(self, prompt, max_new_tokens, **settings):
        self.log.append((list(prompt), max_new_tokens, settings))
        return super().submit(prompt, max_new_tokens, **settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--mgsm", required=True, type=pathlib.Path)
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--config", default="mcts-mini64")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--call-tokens", type=int, default=128)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--json-out", type=pathlib.Path)
    args = parser.parse_args()
    enable_compilation_cache()

    job = load_job_config(args.config, iterations=args.iterations, call_tokens=args.call_tokens)
    loaded = load(args.model)
    tokenizer = loaded.tokenizer
    questions = problems_lib.read_problems(args.mgsm)[:args.problems]
    prompts = [tokenizer.encode(render(job.template, job.instruction + q["question"]),
                                add_special_tokens=False)
               for q in questions]
    table = stops.build_stop_table(tokenizer, job.stop, loaded.cfg.vocab_size)
    config = EngineConfig(slots=args.slots, max_model_len=args.max_model_len)

    searched = RecordingEngine(loaded.model, loaded.eos_ids, config, stop_table=table)
    searched.warmup()
    search = Searcher(MCTS(tokenizer, job.search, config.max_model_len), {"policy": searched})
    start = time.perf_counter()
    search.run(prompts)
    search_s = time.perf_counter() - start

    bare = Engine(loaded.model, loaded.eos_ids, config, stop_table=table)
    bare.warmup()
    start = time.perf_counter()
    for prompt, budget, settings in searched.log:
        bare.submit(prompt, budget, **settings)
    while bare.has_work:
        bare.step()
    bare_s = time.perf_counter() - start

    def side(engine: Engine, seconds: float) -> dict:
        stats = engine.stats
        return {"seconds": seconds, "generated_tokens": stats.kept_tokens,
                "generated_tokens_per_s": stats.kept_tokens / seconds,
                "slot_utilisation": stats.utilisation, "decode_calls": stats.decode_calls,
                "prefilled_tokens": stats.prefilled_tokens, "cached_tokens": stats.cached_tokens,
                "prefilled_per_generated": stats.prefilled_tokens / max(stats.kept_tokens, 1),
                "programs": engine.num_programs}

    search_side, bare_side = side(searched, search_s), side(bare, bare_s)
    report({
        "config": job.name, "problems": len(prompts), "iterations": args.iterations,
        "children": job.search.children, "call_tokens": args.call_tokens, "slots": args.slots,
        "requests": len(searched.log), "search": search_side, "bare_engine": bare_side,
        "efficiency": search_side["generated_tokens_per_s"] / bare_side["generated_tokens_per_s"],
    }, args.json_out)


if __name__ == "__main__":
    main()
