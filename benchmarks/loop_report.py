"""The self-improvement table from scripts/self_improve.sh's per-problem files.

    python benchmarks/loop_report.py [--dir benchmarks/loop/eval] [--json-out F]

For each model (base, sft, dpo1: DPO on wrong-answer pairs only, dpo), language
and method it reads ``mgsm_<lang>-<method>-<model>-<template>384.jsonl`` and
reports pass@1, the share of outputs in Marco-o1's format
(``<Thought>...</Thought>`` then ``<Output>...</Output>``) and the share left
unfinished (greedy CoT only: the 384-token budget ran out); a search row adds
Test@8 and vote@8 over its rollouts. Missing files are left out; a file with
fewer problems than the limit is marked partial. Prints the JSON, then the
table as markdown.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re

from report import report

from marco_jax.files import lines
from marco_jax.search.job_files import summarize

MODELS = ("base", "sft", "dpo1", "dpo")
ROWS = (("cot", "marco", "cot-marco"), ("cot", "chat", "cot-chat"),
        ("mcts-step", "chat", "mcts-step"))
MARCO_FORMAT = re.compile(r"<Thought>.*?</Thought>\s*<Output>.*?</Output>", re.DOTALL)
BUDGET = 384


def row(path: pathlib.Path, single: bool) -> dict:
    """``single``: one chain per problem (CoT), whose token count says whether the
    budget cut it; a search's chosen chain has no such count in the file."""
    records = [json.loads(line) for line in lines(path.read_text(encoding="utf-8")) if line]
    count = max(len(records), 1)
    rollouts = {} if single else {k: v for k, v in summarize(path).items()
                                  if k in ("test@8", "vote@8")}
    return {"problems": len(records), **rollouts,
            "pass@1": sum(bool(r["correct"]) for r in records) / count,
            "marco_format": sum(bool(MARCO_FORMAT.search(r["text"])) for r in records) / count,
            "unfinished": (sum(r["generated_tokens"] >= BUDGET for r in records) / count
                           if single else None),
            "generated_tokens": sum(r["generated_tokens"] for r in records)}


def markdown(rows: list[dict]) -> str:
    out = ["| model | language | method | pass@1 | Marco format | unfinished | Test@8 | vote@8 "
           "| generated tokens |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def pct(key: str) -> str:
            return "–" if r.get(key) is None else f"{100 * r[key]:.1f}%"
        right = round(r["pass@1"] * r["problems"])
        method = r["method"] + (f" (partial: {r['problems']})" if r["partial"] else "")
        out.append(f"| {r['model']} | {r['language']} | {method} | {pct('pass@1')} "
                   f"({right}/{r['problems']}) | {pct('marco_format')} | {pct('unfinished')} | "
                   f"{pct('test@8')} | {pct('vote@8')} | {r['generated_tokens']:,} |")
    return "\n".join(out)


def table(directory: pathlib.Path, limit: int) -> list[dict]:
    out = []
    for method, template, label in ROWS:
        for lang in ("en", "zh"):
            for model in MODELS:
                path = directory / f"mgsm_{lang}-{method}-{model}-{template}384.jsonl"
                if path.is_file():
                    found = row(path, method == "cot")
                    out.append({"model": model, "language": lang, "method": label, **found,
                                "partial": found["problems"] < limit})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=pathlib.Path, default=pathlib.Path("benchmarks/loop/eval"))
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--json-out", type=pathlib.Path)
    args = parser.parse_args()
    if not args.dir.is_dir():
        parser.error(f"--dir {args.dir}: no such directory")
    rows = table(args.dir, args.limit)
    report({"rows": rows}, args.json_out)
    print(markdown(rows))


if __name__ == "__main__":
    main()
