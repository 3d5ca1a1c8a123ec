"""The files of a batched search job: resumable output and trees, the final answer
rule, a finished problem's output line and a file's summary. Input problems are read
by :mod:`marco_jax.search.problems`, named configs by :mod:`marco_jax.search.config`,
and which of them a process searches is :mod:`marco_jax.search.shares`.

Output is JSONL appended one finished problem at a time and flushed, so a
killed job loses at most the problems in flight; a restart skips every id
already written. Which settings wrote it is kept beside it (``OUTPUT.config.json``, so
that its lines stay records), and a restart under other settings is refused.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import itertools
import json
import os
import pathlib
import re
from typing import Callable, Iterable

from marco_jax.errors import MarcoError
from marco_jax.files import lines
from marco_jax.grading import answers_match, final_answer, majority_answer
from marco_jax.search.config import JobConfig
from marco_jax.search.results import SearchResult


def line_id(line: str) -> str | None:
    try:
        return str(json.loads(line)["id"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def whole_lines(path: pathlib.Path) -> list[str]:
    """The lines of ``path`` (none if it is missing) but a torn last one; read only, as
    another process may be appending to it."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    return lines(data[:data.rfind(b"\n") + 1].decode("utf-8"))


def cut_torn_line(path: pathlib.Path) -> None:
    """Cut a torn last line (the job was killed mid-write) off the file, so that lines
    appended later start clean."""
    data = path.read_bytes() if path.is_file() else b""
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _complete_lines(path: pathlib.Path) -> list[tuple[str | None, str]]:
    """The (id, line) of each whole line, a torn last line cut off the file."""
    cut_torn_line(path)
    return [(line_id(line), line) for line in whole_lines(path)]


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


def append_line(output: pathlib.Path, record: dict) -> None:
    with open(output, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def config_path(output: pathlib.Path) -> pathlib.Path:
    """The sidecar naming the settings that wrote ``output``."""
    return output.with_name(output.name + ".config.json")


def stamp(job: JobConfig, model: str, checker_model: str | None = None) -> dict:
    """What decides a job's results, and its hash: the resolved config (template,
    instruction, seed and search settings) and the models (a local path made absolute).
    The config's name and description are left out: a renamed copy gives the same lines."""
    def where(path: str | None) -> str | None:
        return os.path.abspath(path) if path is not None and os.path.exists(path) else path

    settings = {k: v for k, v in dataclasses.asdict(job).items()
                if k not in ("name", "description")}
    settings.update(instruction=job.instruction, model=where(model),
                    checker_model=where(checker_model))
    text = json.dumps(settings, sort_keys=True, ensure_ascii=False)
    return {"config": job.name, "fingerprint": hashlib.sha256(text.encode()).hexdigest()[:16],
            "settings": json.loads(text)}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two settings trees."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(prefix + key)
    return keys


def written_configs(output: pathlib.Path) -> set[str]:
    """The config names on the result lines of ``output`` and of its parts
    (``OUTPUT.part-I-of-N``, see :mod:`marco_jax.search.shares`)."""
    part = re.compile(re.escape(output.name) + r"\.part-\d+-of-\d+")
    parts = [p for p in output.parent.glob(glob.escape(output.name) + ".part-*")
             if part.fullmatch(p.name)]
    names = set()
    for path in (output, *parts):
        for line in whole_lines(path):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("config"), str):
                names.add(record["config"])
    return names


def check_stamp(output: pathlib.Path, new: dict, has_results: bool) -> None:
    """Refuse to add to ``output``'s results under settings other than those that wrote
    them; record ``new`` as the output's settings otherwise. An output without a sidecar
    (written before there were any) is taken to be this job's if its lines name this
    job's config (each line names its config; the settings behind it are not known)."""
    sidecar = config_path(output)
    if has_results and not sidecar.is_file():
        others = sorted(written_configs(output) - {new["config"]})
        if others:
            raise MarcoError(f"{output} holds results of config {', '.join(others)} (written "
                             f"before the settings were kept in {sidecar.name}), not of "
                             f"config {new['config']}: pass --force-new to move them aside "
                             "and start over, or choose another output")
    if has_results and sidecar.is_file():
        old = json.loads(sidecar.read_text(encoding="utf-8"))
        if old["fingerprint"] == new["fingerprint"]:
            return
        differs = ", ".join(_differences(old["settings"], new["settings"])[:4])
        raise MarcoError(f"{output} holds results of config {old['config']} "
                         f"({old['fingerprint']}), not of config {new['config']} "
                         f"({new['fingerprint']}; differs in {differs}): pass --force-new to "
                         "move them aside and start over, or choose another output")
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    fresh = sidecar.with_name(sidecar.name + ".writing")
    fresh.write_text(json.dumps(new, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(fresh, sidecar)


def set_aside(paths: Iterable[pathlib.Path]) -> int | None:
    """Rename each existing file of ``paths`` to ``NAME.bak-N``, one N (the first free)
    for all, so that a job can start over without deleting data; N, or None if none
    existed."""
    found = [p for p in paths if p.exists()]
    if not found:
        return None
    n = next(n for n in itertools.count(1)
             if not any(p.with_name(f"{p.name}.bak-{n}").exists() for p in found))
    for p in found:
        p.rename(p.with_name(f"{p.name}.bak-{n}"))
    return n


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
