"""Tree search with dynamic reflection against plain sampling at equal tokens, per problem.

    python benchmarks/synthesis_vs_sampling.py --tree benchmarks/results/synth/gsm8k-v2.jsonl \
        --sampling benchmarks/results/synth/gsm8k-sc.jsonl \
        [--trees benchmarks/results/synth/trees-gsm8k-v2.jsonl] [--limit N] \
        [--json-out benchmarks/results/synth/synthesis_vs_sampling.json]

Both files are ``scripts/search.py`` outputs over the same problems (the tree
search with a ``v2-*`` config, sampling with ``sc`` and many samples). For each
problem the sampling side gets exactly the tokens the tree used on it: its
samples count in generation order while the tokens spent before them are
below the tree's, so neither side gets more. Reported per side: share of
problems with at least one verified-correct chain, distinct correct chains per
problem, generated tokens per correct chain. With ``--trees`` (a plain MCTS
search's ``--trees`` file, JSON lines, one tree a line) it also says why: how
often an answer is right by where it was drawn (a child of the root: a fresh
sample; below another step; below a reflection), against the sampling side's
samples. ``--limit N`` compares only the problems of the tree file's first N
lines (a run later resumed with a higher ``--limit`` still gives its first
figures).
"""

from __future__ import annotations

import argparse
import json
import pathlib

from report import report

from marco_jax.files import lines
from marco_jax.search.record import TreeRecord, read_trees


def read(path: pathlib.Path, limit: int | None = None) -> dict[str, dict]:
    """Problem id -> its record, over the file's first ``limit`` lines (all: None)."""
    records = list(map(json.loads, lines(path.read_text(encoding="utf-8"))))
    return {r["id"]: r for r in records[:limit]}


def trees_by_id(path: pathlib.Path) -> dict:
    """Problem id -> its tree, from a search's ``--trees`` file (or a directory of
    one JSON file per tree); the first tree of an id counts."""
    out: dict = {}
    for tree in read_trees(path):
        out.setdefault(tree.id, tree)
    return out


def counted(record: dict, budget: int) -> list[tuple[int, bool]]:
    """(tokens, right) of the samples, in order, that start below ``budget`` tokens."""
    out, spent = [], 0
    for tokens, ok in zip(record["candidate_tokens"], record["candidate_correct"]):
        if spent >= budget:
            break
        spent += tokens
        out.append((tokens, bool(ok)))
    return out


def within(record: dict, budget: int) -> tuple[int, int]:
    """(correct samples, tokens spent) over the samples that start below ``budget``."""
    samples = counted(record, budget)
    return sum(ok for _, ok in samples), sum(tokens for tokens, _ in samples)


def attempts(tree: TreeRecord) -> dict[str, list[int]]:
    """[answers, right ones] of a plain MCTS tree by where each was drawn:
    ``fresh`` (a child of the root), ``reflection`` (below a reflection node),
    ``branch`` (below another step). An answer cut off by the budget counts
    as drawn and wrong."""
    nodes = {n.id: n for n in tree.nodes}
    out = {"fresh": [0, 0], "branch": [0, 0], "reflection": [0, 0]}
    for node in tree.nodes:
        if node.kind != "action" or node.rollout_value is None:
            continue
        where, parent = "fresh" if node.parent == 0 else "branch", node.parent
        while parent > 0:
            if nodes[parent].kind == "reflection":
                where = "reflection"
            parent = nodes[parent].parent
        out[where][0] += 1
        out[where][1] += bool(node.correct)
    return out


def attempt_rates(trees: dict, ids: list[str], sampling: dict[str, dict],
                  budgets: dict[str, int]) -> dict:
    """Answers and the share right, per kind of tree attempt and for the samples
    that fit in the tree's tokens. ``trees``: problem id -> its tree."""
    missing = [i for i in ids if i not in trees]
    if missing:
        raise SystemExit(f"no tree for {len(missing)} of the problems, e.g. {missing[0]!r}")
    total = {"fresh": [0, 0], "branch": [0, 0], "reflection": [0, 0], "sampling": [0, 0]}
    for i in ids:
        for where, (n, right) in attempts(trees[i]).items():
            total[where][0] += n
            total[where][1] += right
        samples = counted(sampling[i], budgets[i])
        total["sampling"][0] += len(samples)
        total["sampling"][1] += sum(ok for _, ok in samples)
    return {where: {"answers": n, "right": right, "share_right": right / n if n else None}
            for where, (n, right) in total.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", required=True, type=pathlib.Path)
    parser.add_argument("--sampling", required=True, type=pathlib.Path)
    parser.add_argument("--trees", type=pathlib.Path,
                        help="the tree side's --trees file (a plain MCTS search's)")
    parser.add_argument("--limit", type=int,
                        help="only the problems of the tree file's first N lines")
    parser.add_argument("--json-out", type=pathlib.Path)
    args = parser.parse_args()
    tree, sampling = read(args.tree, args.limit), read(args.sampling)
    ids = sorted(set(tree) & set(sampling))
    if not ids:
        raise SystemExit("no problem is in both files")
    short = [i for i in ids if sum(sampling[i]["candidate_tokens"]) < tree[i]["generated_tokens"]]
    sides = {"tree": [(tree[i]["correct_answers"], tree[i]["generated_tokens"]) for i in ids],
             "sampling": [within(sampling[i], tree[i]["generated_tokens"]) for i in ids]}
    out: dict = {"problems": len(ids), "sampling_ran_out": len(short)}
    for side, rows in sides.items():
        correct = sum(c for c, _ in rows)
        tokens = sum(t for _, t in rows)
        out[side] = {"solved": sum(c > 0 for c, _ in rows) / len(ids),
                     "correct_per_problem": correct / len(ids),
                     "tokens": tokens, "tokens_per_correct": tokens / correct if correct else None}
    out["solved_ratio"] = (out["tree"]["solved"] / out["sampling"]["solved"]
                           if out["sampling"]["solved"] else None)
    if args.trees:
        out["attempts"] = attempt_rates(trees_by_id(args.trees), ids, sampling,
                                        {i: tree[i]["generated_tokens"] for i in ids})
    report(out, args.json_out)


if __name__ == "__main__":
    main()
