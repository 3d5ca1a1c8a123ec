"""Which problems a process searches and where it writes: the whole job, a shard given
by hand (``--process-index/--process-count``), or its share of a job spread over the
hosts of a joined run, each host writing its own parts of the output and trees files,
which process 0 merges into one file when every host is done. One job at a time writes
an output: it holds ``OUTPUT.lock`` (in a spread job, process 0 does, and each process
holds its part's lock too), and it checks the settings that wrote the output first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import itertools
import os
import pathlib
import re
import sys
from typing import Iterator, Sequence

import jax

from marco_jax import distributed, run_lock
from marco_jax.errors import MarcoError
from marco_jax.search import job_files


def shard(problems: list[dict], index: int, count: int) -> list[dict]:
    """This process's share: every ``count``-th problem from ``index``."""
    if not 0 <= index < count:
        raise MarcoError(f"process index {index} is not in [0, {count})")
    return problems[index::count]


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
    done = job_files.finished_ids(output)
    if trees:
        job_files.keep_trees(trees, done)
    return Share(mine, [p for p in mine if p["id"] not in done], output, trees)


@contextlib.contextmanager
def owned(problems: list[dict], output: pathlib.Path, trees: pathlib.Path | None,
          stamp: dict | None = None, force_new: bool = False, index: int = 0,
          count: int = 1) -> Iterator[Share]:
    """:func:`own_share` while holding ``output``'s lock, after :func:`begin`."""
    with run_lock.held(run_lock.lock_path(output), str(output)):
        begin(output, trees, stamp, force_new)
        yield own_share(problems, output, trees, index, count)


def begin(output: pathlib.Path, trees: pathlib.Path | None, stamp: dict | None,
          force_new: bool) -> None:
    """Before any process reads what is done: with ``force_new`` the job's earlier files
    moved aside (never deleted); the job's settings (``stamp``) checked against those
    that wrote the output (see :func:`job_files.check_stamp`)."""
    if force_new:
        files = [output, *part_paths(output), job_files.config_path(output)]
        if trees:
            files += [trees, *part_paths(trees)]
        n = job_files.set_aside(files)
        if n is not None:
            print(f"moved the earlier files of {output} aside to *.bak-{n}", file=sys.stderr)
    if stamp is not None:
        job_files.check_stamp(output, stamp, bool(spread_finished_ids(output)))


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
            for i in map(job_files.line_id, job_files.whole_lines(path)) if i is not None}


def merged_lines(merged: list[str], parts: list[list[str]], order: Sequence[str]) -> list[str]:
    """A file's lines after folding in the processes' parts: every line it holds, then
    each id it lacks once (its first line in ``parts``), in ``order`` (ids not in it last,
    as found). A part written before a kill may hold ids that another part or the file
    holds too; lines without an id are left out of the parts."""
    have = {job_files.line_id(line) for line in merged}
    new: dict[str, str] = {}
    for line in itertools.chain.from_iterable(parts):
        i = job_files.line_id(line)
        if i is not None and i not in have:
            new.setdefault(i, line)
    rank = {i: n for n, i in enumerate(order)}
    return merged + [new[i] for i in sorted(new, key=lambda i: rank.get(i, len(rank)))]


def merge_parts(path: pathlib.Path, order: Sequence[str]) -> None:
    """Fold every part beside ``path`` into it (:func:`merged_lines`), then remove the
    parts. The file is written whole beside ``path`` and renamed over it, so a kill
    leaves either the old file and the parts, or the new file."""
    parts = part_paths(path)
    kept = merged_lines(job_files.whole_lines(path), [job_files.whole_lines(p) for p in parts], order)
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
        job_files.cut_torn_line(part)
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
def spread(problems: list[dict], output: pathlib.Path, trees: pathlib.Path | None,
           stamp: dict | None = None, force_new: bool = False) -> Iterator[Share]:
    """This process's share of a job spread over the processes of a joined run (a host
    each), written to its own parts of ``output`` and ``trees``. When every process has
    searched its share, process 0 folds all parts into ``output`` and ``trees`` in input
    order, each id once. A rerun after any process died (the same command on every host)
    searches only what no file or part holds yet, and merges. Process 0 holds the
    output's lock and runs :func:`begin`, each process holds its part's lock. Run it
    inside :func:`distributed.failures_reported`, so that no process waits for a failed
    one."""
    index, count = jax.process_index(), jax.process_count()
    part = part_path(output, index, count)
    trees_part = trees and part_path(trees, index, count)
    with contextlib.ExitStack() as locks:
        if index == 0:
            locks.enter_context(run_lock.held(run_lock.lock_path(output), str(output)))
            begin(output, trees, stamp, force_new)
        distributed.meet("output checked")
        locks.enter_context(run_lock.held(run_lock.lock_path(part), str(part)))
        _claim(part, trees_part)
        distributed.meet("parts created")
        _check_shared(index, count, output, trees)
        done = spread_finished_ids(output)
        if trees_part:
            job_files.keep_trees(trees_part, done)
        mine = shard(problems, index, count)
        yield Share(mine, [p for p in mine if p["id"] not in done], part, trees_part)
        distributed.meet("shares searched")
        if index == 0:
            order = [p["id"] for p in problems]
            if trees:
                merge_parts(trees, order)
            merge_parts(output, order)
        distributed.meet("parts merged")
