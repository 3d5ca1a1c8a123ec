"""The files of a batched search job: resumable output, process shards, the
final answer rule, a finished problem's output line and a file's summary, and a job
spread over the hosts of a multi-host run (each process's part files, their merge).
Input problems are read by :mod:`marco_jax.search.problems`,
named configs by :mod:`marco_jax.search.config`.

Output is JSONL appended one finished problem at a time and flushed, so a
killed job loses at most the problems in flight; a restart skips every id
already written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import itertools
import json
import os
import pathlib
import re
from typing import Callable, Iterable, Iterator, Sequence

import jax

from marco_jax import distributed
from marco_jax.errors import MarcoError
from marco_jax.files import lines
from marco_jax.grading import answers_match, final_answer, majority_answer
from marco_jax.search.config import JobConfig
from marco_jax.search.results import SearchResult


def _line_id(line: str) -> str | None:
    try:
        return str(json.loads(line)["id"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def _whole_lines(path: pathlib.Path) -> list[str]:
    """The lines of ``path`` (none if it is missing) but a torn last one; read only, as
    another process may be appending to it."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    return lines(data[:data.rfind(b"\n") + 1].decode("utf-8"))


def _cut_torn_line(path: pathlib.Path) -> None:
    """Cut a torn last line (the job was killed mid-write) off the file, so that lines
    appended later start clean."""
    data = path.read_bytes() if path.is_file() else b""
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _complete_lines(path: pathlib.Path) -> list[tuple[str | None, str]]:
    """The (id, line) of each whole line, a torn last line cut off the file."""
    _cut_torn_line(path)
    return [(_line_id(line), line) for line in _whole_lines(path)]


def finished_ids(output: pathlib.Path) -> set[str]:
    """Ids already written; a torn last line's problem is redone."""
    return {i for i, _ in _complete_lines(output) if i is not None}


def keep_trees(trees: pathlib.Path, done: set[str]) -> None:
    """Keep the trees of finished problems only, once each. A tree is appended
    before its problem's output line, so a kill between the two leaves a tree
    whose problem is searched again; this drops it before the rerun."""
    rows = _complete_lines(trees)
    seen: set[str] = set()
    kept = []
    for i, line in rows:
        if i in done and i not in seen:
            seen.add(i)
            kept.append(line)
    if len(kept) < len(rows):
        trees.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


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


@dataclasses.dataclass(frozen=True)
class Share:
    """What one process searches and where it writes: its share of the input, those of
    them not finished yet, and its output and trees files."""

    problems: list[dict]
    todo: list[dict]
    output: pathlib.Path
    trees: pathlib.Path | None


def own_share(problems: list[dict], output: pathlib.Path, trees: pathlib.Path | None,
              index: int = 0, count: int = 1) -> Share:
    """A share written to ``output`` (and ``trees``) itself: the whole job, or a shard
    given by hand; trees of problems without an output line dropped before the rerun."""
    mine = shard(problems, index, count)
    done = finished_ids(output)
    if trees:
        keep_trees(trees, done)
    return Share(mine, [p for p in mine if p["id"] not in done], output, trees)


def part_path(path: pathlib.Path, index: int, count: int) -> pathlib.Path:
    """Process ``index`` of ``count``'s own file beside ``path``: no two processes append
    to one file (the filesystem they share need not order their writes)."""
    return path.with_name(f"{path.name}.part-{index}-of-{count}")


def part_paths(path: pathlib.Path) -> list[pathlib.Path]:
    """Every part beside ``path``, of any process count (a rerun may have fewer hosts),
    by count, then index."""
    pattern = re.compile(re.escape(path.name) + r"\.part-(\d+)-of-(\d+)")
    found = ((pattern.fullmatch(p.name), p)
             for p in path.parent.glob(glob.escape(path.name) + ".part-*-of-*"))
    return [p for m, p in sorted(((int(m[2]), int(m[1])), p) for m, p in found if m)]


def spread_finished_ids(output: pathlib.Path) -> set[str]:
    """Ids any process finished: in ``output`` or in one of its parts."""
    return {i for path in (output, *part_paths(output))
            for i in map(_line_id, _whole_lines(path)) if i is not None}


def merged_lines(merged: list[str], parts: list[list[str]], order: Sequence[str]) -> list[str]:
    """A file's lines after folding in the processes' parts: every line it holds, then
    each id it lacks once (its first line in ``parts``), in ``order`` (ids not in it last,
    as found). A part written before a kill may hold ids that another part or the file
    holds too; lines without an id are left out of the parts."""
    have = {_line_id(line) for line in merged}
    new: dict[str, str] = {}
    for line in itertools.chain.from_iterable(parts):
        i = _line_id(line)
        if i is not None and i not in have:
            new.setdefault(i, line)
    rank = {i: n for n, i in enumerate(order)}
    return merged + [new[i] for i in sorted(new, key=lambda i: rank.get(i, len(rank)))]


def merge_parts(path: pathlib.Path, order: Sequence[str]) -> None:
    """Fold every part beside ``path`` into it (:func:`merged_lines`), then remove the
    parts. The file is written whole beside ``path`` and renamed over it, so a kill
    leaves either the old file and the parts, or the new file."""
    parts = part_paths(path)
    kept = merged_lines(_whole_lines(path), [_whole_lines(p) for p in parts], order)
    fresh = path.with_name(path.name + ".merging")
    with open(fresh, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in kept))
        f.flush()
        os.fsync(f.fileno())
    os.replace(fresh, path)
    for part in parts:
        part.unlink()


def _claim(*parts: pathlib.Path | None) -> None:
    """Create this process's parts, any torn last line cut, so that every process can
    see that the others' are there before anyone searches."""
    for part in filter(None, parts):
        part.parent.mkdir(parents=True, exist_ok=True)
        _cut_torn_line(part)
        part.touch()


def _check_shared(index: int, count: int, *paths: pathlib.Path | None) -> None:
    """Refuse to search when the processes write to directories that are not one: the
    merge needs every part."""
    for path in filter(None, paths):
        for i in range(count):
            if not part_path(path, i, count).exists():
                raise MarcoError(f"{part_path(path, i, count)} (process {i}'s part) is not "
                                 f"visible to process {index}: {path.parent} must be one "
                                 "directory that every host shares (NFS, a bucket mount)")


@contextlib.contextmanager
def spread(problems: list[dict], output: pathlib.Path,
           trees: pathlib.Path | None) -> Iterator[Share]:
    """This process's share of a job spread over the processes of a joined run (a host
    each), written to its own parts of ``output`` and ``trees``. When every process has
    searched its share, process 0 folds all parts into ``output`` and ``trees`` in input
    order, each id once. A rerun after any process died (the same command on every host)
    searches only what no file or part holds yet, and merges. Run it inside
    :func:`distributed.failures_reported`, so that no process waits for a failed one."""
    index, count = jax.process_index(), jax.process_count()
    part = part_path(output, index, count)
    trees_part = trees and part_path(trees, index, count)
    _claim(part, trees_part)
    distributed.meet("parts created")
    _check_shared(index, count, output, trees)
    done = spread_finished_ids(output)
    if trees_part:
        keep_trees(trees_part, done)
    mine = shard(problems, index, count)
    yield Share(mine, [p for p in mine if p["id"] not in done], part, trees_part)
    distributed.meet("shares searched")
    if index == 0:
        order = [p["id"] for p in problems]
        if trees:
            merge_parts(trees, order)
        merge_parts(output, order)
    distributed.meet("parts merged")


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


def result_line(problem: dict, result: SearchResult, job: JobConfig, decode,
                verify: Callable[[str, str], bool]) -> dict:
    """A finished problem's output line: the chosen answer graded against the gold
    one (by the job's verifier, ``verify``), every candidate's answer, and the
    search's figures."""
    text, reward = choose(result, job.final, decode)
    chosen = final_answer(text)
    gold = problem["answer"]
    answers = list(candidate_answers(result, decode))
    tree = result.tree
    if gold is None:
        correct = test_at_n = status = None
    elif job.search.verifier == "numeric":
        correct = answers_match(chosen, gold)
        test_at_n = any(answers_match(a, gold) for a in answers)
    else:
        correct = verify(text, gold)
        test_at_n = any(c.correct for c in result.candidates)
    if gold is not None:
        status = "solved" if result.correct else "unsolved"
    return {
        "id": problem["id"], "question": problem["question"], "answer": gold,
        "chosen_answer": chosen, "correct": correct, "test_at_n": test_at_n,
        "n": len(answers), "reward": reward, "text": text, "candidate_answers": answers,
        "candidate_tokens": [len(c.tokens) for c in result.candidates],
        "candidate_correct": [c.correct for c in result.candidates],
        "generated_tokens": result.generated_tokens, "config": job.name,
        "status": status, "rollouts": result.rollouts, "correct_answers": result.correct,
        "stopped_early": result.stopped_early,
        "tree": {"nodes": tree.size, "max_depth": int(tree.depth_n[:tree.size].max()),
                 "root_visits": int(tree.visits_n[0])},
    }


def summarize(output: pathlib.Path, ids: set[str] | None = None,
              test_at: tuple[int, ...] = (1, 8, 32)) -> dict:
    """pass@1 (the answer the config's final rule chose), Test@N over all N
    rollouts, vote@N (their majority answer, whatever the final rule), and Test@k
    over the first k rollouts in generation order for each k < N."""
    records = [json.loads(line) for line in lines(output.read_text(encoding="utf-8"))
               if line.strip()]
    chosen = [r for r in records if ids is None or r["id"] in ids]
    graded = [r for r in chosen if r["correct"] is not None]
    count = max(len(graded), 1)
    n = max((l["n"] for l in graded), default=0)
    summary = {"problems": len(graded),
               "pass@1": sum(l["correct"] for l in graded) / count,
               f"test@{n}": sum(l["test_at_n"] for l in graded) / count}
    summary[f"vote@{n}"] = sum(answers_match(majority_answer(l["candidate_answers"]), l["answer"])
                               for l in graded) / count
    for k in (k for k in test_at if k < n):
        summary[f"test@{k}"] = sum(
            any(answers_match(a, l["answer"]) for a in l["candidate_answers"][:k])
            for l in graded) / count
    summary["generated_tokens"] = sum(r["generated_tokens"] for r in chosen)
    return summary
