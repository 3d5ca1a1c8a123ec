"""Batched reasoning search over a file of problems, resumable, one JSONL line per problem:
Marco-o1 v1's MCTS, or v2's data engine (tagged action tree, verified answers); or one
question, searched and shown.

    marco-jax-search --model demo --config mcts-step --question "Tom has 3 apples ..." \
        --tree-html tree.html [--answer 7]
    python scripts/search.py --model PATH --config mcts-mini64 --input mgsm_en.tsv \
        --output results/mcts-mini64-en.jsonl [--slots 64] [--mesh data=4,tensor=2] [--limit N] \
        [--trees trees.jsonl] [--process-index I --process-count N] [--set search.children=8 ...]
    python scripts/search.py --model PATH --config v2-gsm8k --input gsm8k/train.jsonl \
        --output synth/gsm8k.jsonl --trees synth/gsm8k-trees.jsonl [--checker-model PATH]

Input: GSM8K JSONL (answers ending ``#### n``), generic JSONL ({"id"?,
"question", "answer"?}), an MGSM TSV or Marco's letter-count JSON. Configs live in
marco_jax/configs/search/ (cot, sc, mcts-step, mcts-mini64, mcts-mini32,
translation; v2-gsm8k, v2-letters) or are given as a path; ``--set key=value`` or ``--set
search.key=value`` overrides any field (an unknown key or a wrong type is an
error naming it). Problems stream through one inference engine (each tree
advances on its own; a finished tree's place goes to the next problem); each
finished problem is appended to --output at once, and a restart skips the ids already
there. Each line holds the chosen answer and text, its reward, whether it matches the
gold answer, Test@N (any rollout correct), tree statistics and, with a gold answer, the
status (solved: the verifier accepted at least one answer), rollouts and correct
answers. ``scripts/export_data.py`` turns the trees into SFT and DPO data.

``--question`` searches one question and prints the answer the search chose, its path's
text, every candidate answer with its confidence (the rollout's mean token confidence,
Marco-o1's reward) and, with ``--tree-html``, writes the tree's page (each node's tokens
with their confidence and top-5 when clicked); it writes no job files.

Multi-host: ``--distributed`` (the same command on every host; peers found by
``jax.distributed``, or given with ``--coordinator HOST:PORT --num-processes N
--process-id I``) gives each host every N-th problem, searched by an engine on that
host's own devices (``--mesh`` sizes one host's mesh) into ``OUTPUT.part-I-of-N``
(and ``TREES.part-I-of-N``). When all hosts are done, process 0 merges the parts into
--output and --trees in input order, each id once, and removes them. --output must be
on a filesystem every host shares. After a host dies, the others stop; rerun the same
command everywhere and it resumes from the parts (with any number of hosts).
``--process-index I --process-count N`` instead shards by hand, each process
appending to its own --output.

One job at a time writes an output: a second job on it stops (exit 2) naming the pid
that holds ``OUTPUT.lock``. The settings that wrote an output (config, template, seeds,
model) are kept in ``OUTPUT.config.json``; a restart under other settings is refused
unless ``--force-new`` moves the earlier files aside (``*.bak-N``) and starts over.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
from typing import TYPE_CHECKING, Callable, ContextManager

from marco_jax import distributed
from marco_jax.cli import MODEL_HELP, run, summary
from marco_jax.engine.options import add_engine_args, engine_setup, model_dtype
from marco_jax.errors import MarcoError
from marco_jax.search import job_files
from marco_jax.search import problems as problems_lib
from marco_jax.search.config import JobConfig, load_job_config

if TYPE_CHECKING:  # the model and search code are imported where they are used, so that
    from marco_jax.loading import LoadedModel
    from marco_jax.search import shares  # --help and a bad option answer at once
    from marco_jax.search.results import SearchResult


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--model", default="builtin:tiny",
                        help=MODEL_HELP)
    parser.add_argument("--checker-model",
                        help="second model for node types an action tree gives to 'checker' "
                             "(v2's rubber-duck checker; must share the tokenizer)")
    parser.add_argument("--config", required=True,
                        help="name in marco_jax/configs/search/ or a path")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=pathlib.Path,
                        help="problems: GSM8K JSONL, JSONL of {id?, question, answer?}, an MGSM "
                             "TSV or Marco's letter-count JSON")
    source.add_argument("--question", help="one question: searched and shown, no job files")
    parser.add_argument("--answer", help="with --question: the gold answer, to grade against")
    parser.add_argument("--tree-html", type=pathlib.Path,
                        help="with --question: write the search tree's page here")
    parser.add_argument("--output", type=pathlib.Path,
                        help="one JSON line per finished problem, appended; a rerun skips the "
                             "ids already there")
    parser.add_argument("--force-new", action="store_true",
                        help="move the output's earlier files aside (OUTPUT.bak-N and so on) "
                             "and start over, whatever settings wrote them")
    parser.add_argument("--trees-in-flight", type=int,
                        help="trees searched at once (default: 8 x slots / children, "
                             "advanced breadth-first)")
    parser.add_argument("--limit", type=int, help="only the first N problems of the input")
    parser.add_argument("--trees", type=pathlib.Path,
                        help="append each problem's tree to this JSON lines file")
    parser.add_argument("--tree-tokens", action="store_true",
                        help="keep each node's tokens with their confidence and top-5 in the "
                             "--trees file (the tree page's token table; several times larger)")
    parser.add_argument("--on-bad-line", choices=["skip", "error"], default="skip",
                        help="an unreadable input line: skip it with a warning, or stop")
    parser.add_argument("--process-index", type=int, default=None,
                        help="search every COUNT-th problem from this one, by hand "
                             "(to OUTPUT itself; see --distributed)")
    parser.add_argument("--process-count", type=int, default=None,
                        help="with --process-index: search every N-th problem by hand")
    parser.add_argument("--seed", type=int, help="override the config's seed")
    parser.add_argument("--iterations", type=int, help="override the config's iterations")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field: final=vote, search.children=8 "
                             "(repeatable; --seed and --iterations are applied after these)")
    add_engine_args(parser)
    distributed.add_args(parser)
    return parser.parse_args()


def share_of(args: argparse.Namespace, job: JobConfig, problems: list[dict],
             joined: bool) -> ContextManager[shares.Share]:
    """This process's problems and files: spread over a joined run, or a shard by hand."""
    import jax

    from marco_jax.search import shares

    stamp = job_files.stamp(job, args.model, args.checker_model)
    if joined:
        return shares.spread(problems, args.output, args.trees, stamp, args.force_new)
    index = jax.process_index() if args.process_index is None else args.process_index
    count = jax.process_count() if args.process_count is None else args.process_count
    return shares.owned(problems, args.output, args.trees, stamp, args.force_new, index, count)


def models(args: argparse.Namespace, job: JobConfig, mesh) -> tuple[LoadedModel,
                                                                    LoadedModel | None]:
    """The policy model and, if given, the checker (which the job may need)."""
    if job.action_tree and "checker" in job.action_tree.models and args.checker_model is None:
        raise MarcoError(f"config {job.name} gives node types to the 'checker' model: "
                         "pass --checker-model")
    from marco_jax.loading import load

    dtype = model_dtype(args)
    loaded = load(args.model, param_dtype=dtype, compute_dtype=dtype, mesh=mesh)
    checker = None if args.checker_model is None else \
        load(args.checker_model, param_dtype=dtype, compute_dtype=dtype, mesh=mesh)
    return loaded, checker


def search(args: argparse.Namespace, job: JobConfig, share: shares.Share) -> None:
    """Search the share's unfinished problems into its files."""
    from marco_jax.search.driver import stats_line
    from marco_jax.search.runner import run_job

    engine_config, mesh = engine_setup(args)
    loaded, checker = models(args, job, mesh)
    figures = run_job(loaded, job, share.todo, share.output, share.trees, engine_config, mesh,
                      args.trees_in_flight, checker, args.tree_tokens)
    print(f"{len(share.todo)} problems in {figures['seconds']:.1f}s; {stats_line(figures)} "
          f"-> {share.output}")


def ask(args: argparse.Namespace, job: JobConfig) -> None:
    """One question searched and shown (the quick start)."""
    import time

    from tqdm import tqdm

    from marco_jax.search.runner import JobRun
    from marco_jax.search.tree_html import render

    engine_config, mesh = engine_setup(args)
    if mesh is None:  # one tree runs at most its children at once: a pool for those
        engine_config = dataclasses.replace(
            engine_config, slots=min(engine_config.slots, job.search.children))
    print(f"loading {args.model}", flush=True)
    loaded, checker = models(args, job, mesh)
    run = JobRun(loaded, job, engine_config, mesh, checker=checker)
    problem = {"id": "question", "question": args.question, "answer": args.answer}
    print(f"searching with {job.name} ({job.search.iterations} iterations of "
          f"{job.search.children} children)", flush=True)
    start = time.perf_counter()
    with tqdm(desc="searching", unit=" expansions") as bar:
        def grown(_: str, tree) -> None:
            bar.update(1)
            bar.set_postfix(nodes=tree.size, refresh=False)

        [(problem, result, line)] = run.stream([problem], on_grow=grown)
    seconds = time.perf_counter() - start
    print(show_answer(line, result, run.decode, seconds, job.final))
    if args.tree_html:
        record = run.record(problem, result, line, tree_tokens=True)
        try:
            args.tree_html.write_text(render(record, "question"), encoding="utf-8")
        except OSError as e:
            raise MarcoError(f"{args.tree_html}: cannot write: {e.strerror}") from None
        print(f"tree page: {args.tree_html.resolve()}")


def show_answer(line: dict, result: SearchResult, decode: Callable[[list[int]], str],
                seconds: float, rule: str, most: int = 12) -> str:
    """The chosen answer, its text and the candidates, best first, as a person reads them."""
    from marco_jax.grading import final_answer

    graded = "" if line["correct"] is None else \
        f" ({'right' if line['correct'] else 'wrong'}: the answer is {line['answer']})"
    out = [f"answer: {line['chosen_answer']}{graded}",
           f"  {line['rollouts']} rollouts, {line['generated_tokens']} tokens, {seconds:.0f} s, "
           f"chosen by {line['config']}'s rule ({rule}) from {line['n']} candidates",
           "", "its reasoning:", *("  " + row for row in line["text"].strip().splitlines()),
           "", "candidates (confidence: the rollout's mean token confidence):"]
    candidates = sorted(result.candidates, key=lambda c: -c.value)
    for c in candidates[:most]:
        text = decode(c.tokens)
        mark = "  <- chosen" if text == line["text"] else ""
        answer = final_answer(text)
        ending = "" if c.finished else " (cut at the token budget)"
        out.append(f"  {c.value:.3f}  {answer if answer is not None else '(none)'}{ending}{mark}")
    if len(candidates) > most:
        out.append(f"  ... and {len(candidates) - most} more")
    return "\n".join(out)


def search_job(args: argparse.Namespace, joined: bool) -> None:
    """The job: this process's share of the problems searched, resumably."""
    import jax

    overrides = {k: v for k, v in (("seed", args.seed), ("iterations", args.iterations))
                 if v is not None}
    job = load_job_config(args.config, args.set, **overrides)
    if args.trees_in_flight is not None and args.trees_in_flight < 1:
        raise MarcoError(f"--trees-in-flight must be >= 1, got {args.trees_in_flight}")
    if args.question is not None:
        extra = [f"--{name.replace('_', '-')}" for name in ("output", "trees", "limit")
                 if getattr(args, name) is not None]
        if extra:
            raise MarcoError(f"--question prints its result and writes no job files: drop "
                             f"{', '.join(extra)} (or put the question in an --input file)")
        return ask(args, job)
    if args.answer is not None or args.tree_html is not None:
        raise MarcoError("--answer and --tree-html go with --question (for a job's trees: "
                         "--trees, then show_tree)")
    if args.output is None:
        raise MarcoError("--input needs --output (the job's results, one line a problem)")
    if args.tree_tokens and args.trees is None:
        raise MarcoError("--tree-tokens keeps token scores in the --trees file: give --trees")
    problems = problems_lib.read_problems(args.input, args.on_bad_line)[:args.limit]
    if not problems:
        raise MarcoError(f"no problems in {args.input}"
                         + " (--limit 0)" * (args.limit == 0))
    with share_of(args, job, problems, joined) as share:
        if share.todo:
            search(args, job, share)
        else:
            print(f"all {len(share.problems)} problems already in {args.output}"
                  + " or its parts" * joined)
    if joined and jax.process_index() == 0:
        print(f"the parts of {jax.process_count()} processes merged -> {args.output}")


def main() -> None:
    args = parse_args()
    if distributed.asked(args) and (args.process_index, args.process_count) != (None, None):
        raise MarcoError("--distributed takes the process index and count from "
                         "jax.distributed: drop --process-index and --process-count")
    joined = distributed.join(args)
    with distributed.failures_reported():
        search_job(args, joined)


def cli() -> None:
    """The console command (errors as one line, exit 2)."""
    run(main)


if __name__ == "__main__":
    cli()
