"""The MGSM table from the per-problem files: every method's pass@1, Test@k and
vote@N, and, problem by problem, how many it solved that CoT did not (and back).

    python benchmarks/mgsm_report.py [--dir benchmarks/mgsm] [--json-out F]

Reads ``<dir>/mgsm_<lang>-<method>-<tag>.jsonl`` (written by scripts/eval_mgsm.py);
a file with fewer problems than the others is reported as partial.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from report import report

from marco_jax.files import lines
from marco_jax.search.job_files import summarize

METHODS = ("cot", "sc", "mcts-step", "mcts-mini64", "mcts-mini32")


def solved(path: pathlib.Path) -> dict[str, bool]:
    """Problem id -> whether the chosen answer was right."""
    records = (json.loads(line) for line in lines(path.read_text(encoding="utf-8")) if line)
    return {r["id"]: bool(r["correct"]) for r in records}


def table(directory: pathlib.Path) -> list[dict]:
    rows = []
    for lang in ("en", "zh"):
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


def markdown(rows: list[dict]) -> str:
    out = ["| method | language | problems | pass@1 | Test@1 | Test@8 | vote@8 | "
           "solved only by it / only by CoT | generated tokens |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def pct(key: str) -> str:
            return f"{100 * r[key]:.1f}%" if key in r else "–"
        right = round(r["pass@1"] * r["problems"])
        versus = f"{r['only_this']} / {r['only_cot']}" if "only_this" in r else "–"
        method = r["method"] + (" (partial)" if r["partial"] else "")
        out.append(f"| {method} | {r['language']} | {r['problems']} | {pct('pass@1')} "
                   f"({right}/{r['problems']}) | {pct('test@1')} | {pct('test@8')} | "
                   f"{pct('vote@8')} | {versus} | "
                   f"{r['generated_tokens']:,} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=pathlib.Path, default=pathlib.Path("benchmarks/mgsm"))
    parser.add_argument("--json-out", type=pathlib.Path)
    args = parser.parse_args()
    if not args.dir.is_dir():
        parser.error(f"--dir {args.dir}: no such directory")
    rows = table(args.dir)
    report({"rows": rows}, args.json_out)
    print(markdown(rows))


if __name__ == "__main__":
    main()
