"""The tree-vs-sampling comparison: equal tokens per problem, where a tree's answers come from."""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import synthesis_vs_sampling as compare  # noqa: E402

from marco_jax.search.record import TreeRecord  # noqa: E402


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
    (tmp_path / "p.json").write_text(json.dumps(
        {"nodes": [node(0, -1, "root"), node(1, 0, correct=False)]}))
    rates = compare.attempt_rates(tmp_path, ["p"], {"p": record}, {"p": 301})
    assert rates["sampling"] == {"answers": 3, "right": 1, "share_right": 1 / 3}
    assert rates["fresh"]["share_right"] == 0 and rates["reflection"]["share_right"] is None
