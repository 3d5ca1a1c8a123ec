"""The pieces of a batched search job: resumable output, process shards, the
final answer rule. Input problems are read by :mod:`marco_jax.search.problems`,
named configs by :mod:`marco_jax.search.config`.

Output is JSONL appended one finished problem at a time and flushed, so a
killed job loses at most the problems in flight; a restart skips every id
already written.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Iterable

from marco_jax.grading import final_answer, majority_answer
from marco_jax.errors import MarcoError
from marco_jax.files import lines
from marco_jax.search.results import SearchResult


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
        winner = majority_answer([final_answer(t) for t in texts])
        for text, candidate in zip(texts, pool):
            if final_answer(text) == winner:
                return text, candidate.value
    return decode(result.best_tokens), result.best_value


def candidate_answers(result: SearchResult, decode) -> Iterable[str | None]:
    return (final_answer(decode(c.tokens)) for c in result.candidates)
