"""MGSM accuracy of one method: pass@1 of the chosen answer and Test@N over its rollouts.

    python scripts/eval_mgsm.py --model PATH --data ../shared/data/mgsm/mgsm_en.tsv \
        --method cot|sc|mcts-step|mcts-mini64|mcts-mini32 --limit 40 [--out-dir results/eval] \
        [--set search.children=8 ...]

Writes the per-problem JSONL (``<out-dir>/<data>-<method>.jsonl``, resumable, one
line per problem: chosen answer, correct, test_at_n, text, tree statistics) so two
methods can be compared problem by problem, and prints the summary as JSON.
A method is a search config in marco_jax/configs/search/; ``--set key=value`` or
``--set search.key=value`` overrides any of its fields.
Answers come from the ``<Output>`` part (else a boxed answer, "Answer:", an output
block, or the last number), commas removed, compared numerically.

``--distributed`` (the same command on every host of a multi-host run) spreads the
problems over the hosts as ``scripts/search.py --distributed`` does: one per-problem
file in the end, and process 0 prints the summary (its run figures are its own share's).

As for ``scripts/search.py``, one evaluation at a time writes a per-problem file, and a
rerun under other settings (``--iterations``, ``--model``, ``--set`` ...) is refused
unless ``--force-new`` moves the earlier file aside (``*.bak-N``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
from typing import TYPE_CHECKING

from marco_jax import distributed
from marco_jax.cli import MODEL_HELP, run, summary
from marco_jax.engine.options import add_engine_args, engine_setup, model_dtype
from marco_jax.errors import MarcoError
from marco_jax.search import job_files
from marco_jax.search import problems as problems_lib
from marco_jax.search.config import JobConfig, load_job_config

if TYPE_CHECKING:  # the model and search code are imported where they are used, so that
    from marco_jax.search import shares  # --help and a bad option answer at once

METHODS = ("cot", "sc", "mcts-step", "mcts-mini64", "mcts-mini32")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--model", default="builtin:tiny",
                        help=MODEL_HELP)
    parser.add_argument("--data", required=True, type=pathlib.Path, help="MGSM TSV or JSONL")
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--limit", type=int, help="the first N problems")
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("results/eval"),
                        help="one JSONL of results per language and method, and the summary")
    parser.add_argument("--force-new", action="store_true",
                        help="move an earlier per-problem file aside (.bak-N) and start over")
    parser.add_argument("--trees-in-flight", type=int,
                        help="trees searched at once (default: 8 x slots / children, "
                             "advanced breadth-first)")
    parser.add_argument("--iterations", type=int, help="override the method's iterations")
    parser.add_argument("--max-tokens", type=int,
                        help="override the generated-token cap of a path (and of one call)")
    parser.add_argument("--template", choices=("marco", "chat", "none"),
                        help="override the method's prompt template")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field: final=vote, search.children=8 "
                             "(repeatable; the options above are applied after these)")
    parser.add_argument("--tag", default="",
                        help="added to the per-problem file name (<data>-<method>-<tag>.jsonl)")
    add_engine_args(parser)
    distributed.add_args(parser)
    return parser.parse_args()


def evaluate(args: argparse.Namespace, job: JobConfig, share: shares.Share) -> dict:
    """Search the share's unfinished problems into its file; the figures of this run on
    this host (its tokens as ``generated_tokens_this_run``: the summary's
    ``generated_tokens`` count every problem in the file)."""
    from marco_jax.loading import load
    from marco_jax.search.runner import run_job

    engine_config, mesh = engine_setup(args)
    dtype = model_dtype(args)
    loaded = load(args.model, param_dtype=dtype, compute_dtype=dtype, mesh=mesh)
    figures = run_job(loaded, job, share.todo, share.output, None, engine_config, mesh,
                      args.trees_in_flight)
    return {"seconds_this_run": figures.pop("seconds"),
            "generated_tokens_this_run": figures.pop("generated_tokens"), **figures}


def evaluate_method(args: argparse.Namespace, joined: bool) -> None:
    """Search the method's unfinished problems (this process's share) and print the summary."""
    import jax

    from marco_jax.search import shares

    if args.trees_in_flight is not None and args.trees_in_flight < 1:
        raise MarcoError(f"--trees-in-flight must be >= 1, got {args.trees_in_flight}")
    overrides = {} if args.iterations is None else {"iterations": args.iterations}
    if args.max_tokens is not None:
        overrides.update(max_tokens=args.max_tokens, call_tokens=args.max_tokens)
    job = load_job_config(args.method, args.set, **overrides)
    if args.template:
        job = dataclasses.replace(job, template=args.template)
    problems = problems_lib.read_problems(args.data)[:args.limit]
    if not problems:
        raise MarcoError(f"no problems in {args.data}" + " (--limit 0)" * (args.limit == 0))
    name = "-".join(filter(None, (args.data.stem, args.method, args.tag)))
    output = args.out_dir / f"{name}.jsonl"
    stamp = job_files.stamp(job, args.model)
    share = (shares.spread(problems, output, None, stamp, args.force_new) if joined
             else shares.owned(problems, output, None, stamp, args.force_new))
    run_stats = {"seconds_this_run": 0.0}
    with share as mine:
        if mine.todo:
            run_stats = evaluate(args, job, mine)
    if not joined or jax.process_index() == 0:
        summary = job_files.summarize(output, {p["id"] for p in problems})
        print(json.dumps({"data": str(args.data), "method": args.method, **summary,
                          **run_stats, "per_problem": str(output)}, indent=1))


def main() -> None:
    args = parse_args()
    joined = distributed.join(args)
    with distributed.failures_reported():
        evaluate_method(args, joined)


def cli() -> None:
    """The console command (errors as one line, exit 2)."""
    run(main)


if __name__ == "__main__":
    cli()
