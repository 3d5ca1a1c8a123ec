"""The pieces of a batched search job: input problems, resumable output, the final
answer rule. Its named configs are read by :mod:`marco_jax.search.config`.

Input is JSONL (``{"id", "question", "answer"?}``) or an MGSM TSV (question TAB
answer; ids are ``<file stem>-<line>``). A malformed line is reported with its
line number and skipped, or refused (``on_bad_line="error"``). Output is JSONL
appended one finished problem at a time and flushed, so a killed job loses at
most the problems in flight; a restart skips every id already written.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Iterable

from marco_jax.answers import extract_answer, majority_answer
from marco_jax.errors import MarcoError
from marco_jax.files import lines
from marco_jax.search.mcts import SearchResult


def read_problems(path: pathlib.Path, on_bad_line: str = "skip") -> list[dict]:
    """Problems as dicts with id, question and (optional) answer."""
    if not path.is_file():
        raise MarcoError(f"{path}: no such file")
    problems, seen = [], set()
    for number, line in enumerate(lines(path.read_text(encoding="utf-8")), 1):
        if not line.strip():
            continue
        try:
            problem = _parse_line(path, number, line)
            if problem["id"] in seen:
                raise ValueError(f"duplicate id {problem['id']!r}")
        except ValueError as error:
            message = f"{path}:{number}: {error}"
            if on_bad_line == "error":
                raise MarcoError(message) from None
            print(f"warning: skipping {message}", file=sys.stderr)
            continue
        seen.add(problem["id"])
        problems.append(problem)
    return problems


def _parse_line(path: pathlib.Path, number: int, line: str) -> dict:
    if path.suffix == ".tsv":
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip():
            raise ValueError("expected 'question<TAB>answer'")
        return {"id": f"{path.stem}-{number}", "question": parts[0], "answer": parts[1].strip()}
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("question"), str) \
            or "id" not in record:
        raise ValueError("expected an object with 'id' and 'question'")
    answer = record.get("answer")
    return {"id": str(record["id"]), "question": record["question"],
            "answer": None if answer is None else str(answer)}


def finished_ids(output: pathlib.Path) -> set[str]:
    """Ids already written. A torn last line (the job was killed mid-write) is cut
    off the file, so its problem is redone and later lines start clean."""
    if not output.is_file():
        return set()
    data = output.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[:data.rfind(b"\n") + 1]
        with open(output, "r+b") as f:
            f.truncate(len(data))
    done = set()
    for line in lines(data.decode("utf-8")):
        try:
            done.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def shard(problems: list[dict], index: int, count: int) -> list[dict]:
    """This process's share: every ``count``-th problem from ``index``."""
    if not 0 <= index < count:
        raise MarcoError(f"process index {index} is not in [0, {count})")
    return problems[index::count]


def append_line(output: pathlib.Path, record: dict) -> None:
    with open(output, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def choose(result: SearchResult, final: str, decode) -> tuple[str, float]:
    """The chosen answer text and its value, by the config's ``final`` rule. An
    answer the token budget cut off is chosen only when no finished one exists."""
    pool = [c for c in result.candidates if c.finished] or result.candidates
    if final == "max_value" and pool:
        best = max(pool, key=lambda c: c.value)
        return decode(best.tokens), best.value
    if final == "vote" and pool:
        texts = [decode(c.tokens) for c in pool]
        winner = majority_answer([extract_answer(t) for t in texts])
        for text, candidate in zip(texts, pool):
            if extract_answer(text) == winner:
                return text, candidate.value
    return decode(result.best_tokens), result.best_value


def candidate_answers(result: SearchResult, decode) -> Iterable[str | None]:
    return (extract_answer(decode(c.tokens)) for c in result.candidates)
