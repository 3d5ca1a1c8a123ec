"""Problems for search and synthesis jobs, from the formats the data comes in.

Every reader yields dicts ``{"id", "question", "answer"}`` where ``answer`` is
the bare gold answer (or None) and, for GSM8K, ``solution`` keeps the worked
solution. Formats, by file:

- ``.tsv``: MGSM (question TAB answer); ids ``<stem>-<line>``.
- ``.jsonl``: one object per line, ``question`` plus optional ``id`` and
  ``answer``. A GSM8K answer (worked solution ending ``#### 1,234``) is cut to
  its final number; without an ``id`` the id is ``<stem>-<line>``.
- ``.json``: a list of objects, Marco-o1's letter-counting set
  (``{"id", "problem", "solution"}``) or the JSONL fields above.

A malformed record is reported with its line (or index) and skipped, or
refused with ``on_bad_line="error"``.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
from typing import Any

from marco_jax.errors import MarcoError
from marco_jax.files import lines

GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def gold_answer(raw: Any) -> tuple[str | None, str | None]:
    """``(answer, worked solution)`` from a record's answer field: a GSM8K
    solution gives its ``####`` number and keeps the text; anything else is the
    answer itself."""
    if raw is None:
        return None, None
    text = str(raw).strip()
    if (final := GSM8K_FINAL.search(text)) is not None:
        return final.group(1).strip(), text[:final.start()].rstrip()
    return text, None


def read_problems(path: pathlib.Path, on_bad_line: str = "skip") -> list[dict]:
    """Problems as dicts with id, question and answer (None if the file has none)."""
    if not path.is_file():
        raise MarcoError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise MarcoError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(records, list):
            raise MarcoError(f"{path}: expected a list of problems")
        located = [(f"{path}[{i}]", i + 1, r) for i, r in enumerate(records)]
    else:
        located = [(f"{path}:{n}", n, line) for n, line in enumerate(lines(text), 1)
                   if line.strip()]
    problems, seen = [], set()
    for where, number, raw in located:
        try:
            problem = _tsv(path, number, raw) if path.suffix == ".tsv" else \
                _record(path, number, json.loads(raw) if isinstance(raw, str) else raw)
            if problem["id"] in seen:
                raise ValueError(f"duplicate id {problem['id']!r}")
        except ValueError as error:  # json.JSONDecodeError is a ValueError
            reason = f"not JSON ({error.msg})" if isinstance(error, json.JSONDecodeError) \
                else str(error)
            if on_bad_line == "error":
                raise MarcoError(f"{where}: {reason}") from None
            print(f"warning: skipping {where}: {reason}", file=sys.stderr)
            continue
        seen.add(problem["id"])
        problems.append(problem)
    return problems


def _tsv(path: pathlib.Path, number: int, line: str) -> dict:
    parts = line.split("\t")
    if len(parts) != 2 or not parts[0].strip():
        raise ValueError("expected 'question<TAB>answer'")
    return {"id": f"{path.stem}-{number}", "question": parts[0], "answer": parts[1].strip()}


def _record(path: pathlib.Path, number: int, record: Any) -> dict:
    if not isinstance(record, dict):
        raise ValueError("expected an object")
    question = record.get("question", record.get("problem"))
    if not isinstance(question, str) or not question.strip():
        raise ValueError("expected a 'question' (or 'problem') string")
    answer, solution = gold_answer(record.get("answer", record.get("solution")))
    problem = {"id": str(record.get("id", f"{path.stem}-{number}")), "question": question,
               "answer": answer}
    if solution is not None:
        problem["solution"] = solution
    return problem
