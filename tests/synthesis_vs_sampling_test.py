"""The tree-vs-sampling comparison: equal tokens per problem, where a tree's answers come from."""

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import synthesis_vs_sampling as compare  # noqa: E402

from marco_jax.search.record import TreeRecord, read_trees  # noqa: E402


def node(id_, parent, kind="action", correct=None, value=0.0):
    return {"id": id_, "parent": parent, "kind": kind, "correct": correct,
            "rollout_value": value if kind == "action" else None}


def test_answers_are_counted_by_where_they_were_drawn():
    tree = {"nodes": [node(0, -1, "root"), node(1, 0, correct=False), node(2, 0, correct=True),
                      node(3, 0, "reflection"), node(4, 3, correct=True),
                      node(5, 4, correct=False), node(6, 1, correct=True),
                      node(7, 1, correct=None, value=None)]}  # 7: never valued
    record = TreeRecord.from_json(tree, "tree")
    assert compare.attempts(record) == {"fresh": [2, 1], "branch": [1, 1], "reflection": [2, 1]}


def test_sampling_gets_the_samples_that_start_within_the_trees_tokens(tmp_path):
    record = {"candidate_tokens": [100, 200, 300, 50], "candidate_correct": [False, False,
                                                                             True, True]}
    assert compare.counted(record, 300) == [(100, False), (200, False)]
    assert compare.counted(record, 301) == [(100, False), (200, False), (300, True)]
    assert compare.within(record, 301) == (1, 600)
    trees = tmp_path / "trees.jsonl"
    trees.write_text("".join(
        json.dumps({"id": i, "nodes": [node(0, -1, "root"), node(1, 0, correct=ok)]}) + "\n"
        for i, ok in (("q", True), ("p", False), ("p", True))))
    by_id = compare.trees_by_id(trees)
    assert sorted(by_id) == ["p", "q"]
    rates = compare.attempt_rates(by_id, ["p"], {"p": record}, {"p": 301})
    assert rates["sampling"] == {"answers": 3, "right": 1, "share_right": 1 / 3}
    assert rates["fresh"] == {"answers": 1, "right": 0, "share_right": 0}  # p's first tree
    assert rates["reflection"]["share_right"] is None
    with pytest.raises(SystemExit, match="no tree for 1 of the problems"):
        compare.attempt_rates(by_id, ["p", "r"], {"p": record, "r": record}, {"p": 1, "r": 1})


def test_limit_keeps_the_problems_of_the_first_lines(tmp_path):
    path = tmp_path / "tree.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "generated_tokens": i}) + "\n"
                            for i in (3, 1, 2)))
    assert list(compare.read(path)) == ["p3", "p1", "p2"]
    assert list(compare.read(path, 2)) == ["p3", "p1"]


def test_the_committed_trees_read_one_per_problem_of_their_run():
    results = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    runs = sorted(results.glob("**/trees-*.jsonl"))
    assert len(runs) == 6
    for path in runs:
        per_problem = path.with_name(path.name[len("trees-"):])
        ids = [json.loads(line)["id"] for line in per_problem.read_text().splitlines()]
        trees = compare.trees_by_id(path)
        assert sorted(trees) == sorted(ids) and len(read_trees(path)) == len(ids), path
