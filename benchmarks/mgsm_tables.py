"""The MGSM tables of BENCHMARKS.md from the committed per-problem files.

    python benchmarks/mgsm_tables.py mgsm [--dir benchmarks/results/mgsm] [--json-out F]
    python benchmarks/mgsm_tables.py loop [--dir benchmarks/results/loop/eval] [--limit 40] \
        [--json-out F]

``mgsm``: every method on the demo checkpoint (``benchmarks/mgsm_table.sh``). Reads
``<dir>/mgsm_<lang>-<method>-<tag>.jsonl`` (written by scripts/eval_mgsm.py) and
reports pass@1, Test@k and vote@N and, problem by problem, how many it solved
that CoT did not (and back); a file with fewer problems than the others is
reported as partial.

``loop``: the self-improvement loop (scripts/self_improve.sh). For each model
(base, sft, dpo1: DPO on wrong-answer pairs only, dpo), language and method it
reads ``mgsm_<lang>-<method>-<model>-<template>384.jsonl`` and reports pass@1,
the share of outputs in Marco-o1's format (``<Thought>...</Thought>`` then
``<Output>...</Output>``) and the share left unfinished (greedy CoT only: the
384-token budget ran out); a search row adds Test@8 and vote@8 over its
rollouts. Missing files are left out; a file with fewer problems than
``--limit`` is marked partial.

Both print the JSON, then the table as markdown.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re

from report import report

from marco_jax.files import lines
from marco_jax.search.job_files import summarize

LANGUAGES = ("en", "zh")


def records(path: pathlib.Path) -> list[dict]:
    """The per-problem records of one file, in file order."""
    return [json.loads(line) for line in lines(path.read_text(encoding="utf-8")) if line]


def percent(row: dict, key: str) -> str:
    return "–" if row.get(key) is None else f"{100 * row[key]:.1f}%"


def right_of(row: dict) -> str:
    """pass@1 as a share and as right/problems."""
    right = round(row["pass@1"] * row["problems"])
    return f"{percent(row, 'pass@1')} ({right}/{row['problems']})"


# The methods table (benchmarks/mgsm_table.sh's runs).

METHODS = ("cot", "sc", "mcts-step", "mcts-mini64", "mcts-mini32")


def solved(path: pathlib.Path) -> dict[str, bool]:
    """Problem id -> whether the chosen answer was right."""
    return {r["id"]: bool(r["correct"]) for r in records(path)}


def mgsm_table(directory: pathlib.Path) -> list[dict]:
    rows = []
    for lang in LANGUAGES:
        files = {m: next(iter(sorted(directory.glob(f"mgsm_{lang}-{m}-*.jsonl"))), None)
                 for m in METHODS}
        cot = solved(files["cot"]) if files["cot"] else None
        for method, path in files.items():
            if path is None:
                continue
            row = {"language": lang, "method": method, "file": str(path), **summarize(path)}
            if cot is not None and method != "cot":
                mine = solved(path)
                shared = mine.keys() & cot.keys()
                row["only_this"] = sum(mine[i] and not cot[i] for i in shared)
                row["only_cot"] = sum(cot[i] and not mine[i] for i in shared)
            rows.append(row)
        most = max((r["problems"] for r in rows if r["language"] == lang), default=0)
        for r in rows:
            if r["language"] == lang:
                r["partial"] = r["problems"] < most
    return rows


def mgsm_markdown(rows: list[dict]) -> str:
    out = ["| method | language | problems | pass@1 | Test@1 | Test@8 | vote@8 | "
           "solved only by it / only by CoT | generated tokens |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        versus = f"{r['only_this']} / {r['only_cot']}" if "only_this" in r else "–"
        method = r["method"] + (" (partial)" if r["partial"] else "")
        out.append(f"| {method} | {r['language']} | {r['problems']} | {right_of(r)} | "
                   f"{percent(r, 'test@1')} | {percent(r, 'test@8')} | "
                   f"{percent(r, 'vote@8')} | {versus} | {r['generated_tokens']:,} |")
    return "\n".join(out)


# The self-improvement table (scripts/self_improve.sh's evaluations).

MODELS = ("base", "sft", "dpo1", "dpo")
LOOP_ROWS = (("cot", "marco", "cot-marco"), ("cot", "chat", "cot-chat"),
             ("mcts-step", "chat", "mcts-step"))
MARCO_FORMAT = re.compile(r"<Thought>.*?</Thought>\s*<Output>.*?</Output>", re.DOTALL)
BUDGET = 384


def loop_row(path: pathlib.Path, single: bool) -> dict:
    """``single``: one chain per problem (CoT), whose token count says whether the
    budget cut it; a search's chosen chain has no such count in the file."""
    found = records(path)
    count = max(len(found), 1)
    rollouts = {} if single else {k: v for k, v in summarize(path).items()
                                  if k in ("test@8", "vote@8")}
    return {"problems": len(found), **rollouts,
            "pass@1": sum(bool(r["correct"]) for r in found) / count,
            "marco_format": sum(bool(MARCO_FORMAT.search(r["text"])) for r in found) / count,
            "unfinished": (sum(r["generated_tokens"] >= BUDGET for r in found) / count
                           if single else None),
            "generated_tokens": sum(r["generated_tokens"] for r in found)}


def loop_table(directory: pathlib.Path, limit: int) -> list[dict]:
    out = []
    for method, template, label in LOOP_ROWS:
        for lang in LANGUAGES:
            for model in MODELS:
                path = directory / f"mgsm_{lang}-{method}-{model}-{template}384.jsonl"
                if path.is_file():
                    found = loop_row(path, method == "cot")
                    out.append({"model": model, "language": lang, "method": label, **found,
                                "partial": found["problems"] < limit})
    return out


def loop_markdown(rows: list[dict]) -> str:
    out = ["| model | language | method | pass@1 | Marco format | unfinished | Test@8 | vote@8 "
           "| generated tokens |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        method = r["method"] + (f" (partial: {r['problems']})" if r["partial"] else "")
        out.append(f"| {r['model']} | {r['language']} | {method} | {right_of(r)} | "
                   f"{percent(r, 'marco_format')} | {percent(r, 'unfinished')} | "
                   f"{percent(r, 'test@8')} | {percent(r, 'vote@8')} | "
                   f"{r['generated_tokens']:,} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tables = parser.add_subparsers(dest="table", required=True)
    mgsm = tables.add_parser("mgsm", help="every method on the demo checkpoint")
    mgsm.add_argument("--dir", type=pathlib.Path, default=pathlib.Path("benchmarks/results/mgsm"))
    loop = tables.add_parser("loop", help="the self-improvement loop's models")
    loop.add_argument("--dir", type=pathlib.Path,
                      default=pathlib.Path("benchmarks/results/loop/eval"))
    loop.add_argument("--limit", type=int, default=40,
                      help="problems a complete file has (fewer: partial)")
    for sub in (mgsm, loop):
        sub.add_argument("--json-out", type=pathlib.Path)
    args = parser.parse_args()
    if not args.dir.is_dir():
        parser.error(f"--dir {args.dir}: no such directory")
    if args.table == "mgsm":
        rows = mgsm_table(args.dir)
        text = mgsm_markdown(rows)
    else:
        rows = loop_table(args.dir, args.limit)
        text = loop_markdown(rows)
    report({"rows": rows}, args.json_out)
    print(text)


if __name__ == "__main__":
    main()
