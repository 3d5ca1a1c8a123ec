"""The tree record's per-token scores: kept only on request, written and read back as they
were, and a malformed token list refused naming its node."""

import json

import numpy as np
import pytest

from marco_jax.errors import MarcoError
from marco_jax.search.record import TokenRecord, TreeRecord
from marco_jax.search.tree import ActionScores, Outcome, Tree


def scored_tree() -> Tree:
    """A root, a child the model wrote (two tokens, top-2 each) and one the search wrote."""
    tree = Tree.new([1, 2], 2)
    tree.add_child(0, [7, 8], outcome=Outcome(value=0.5), scores=ActionScores(
        np.array([0.9, 0.6]), np.array([[7, 3], [8, 4]]), np.array([[-0.1, -2.5], [-0.5, -1.0]])))
    tree.add_child(0, [5], kind="reflection")
    return tree


def texts(tokens):
    return " ".join(f"t{t}" for t in tokens)


def test_token_scores_are_kept_on_request_and_survive_json():
    tree = scored_tree()
    plain = TreeRecord.of(tree, texts, "p", "q")
    assert all(node.tokens is None for node in plain.nodes)
    assert all("tokens" not in node for node in plain.to_json()["nodes"])  # files stay small
    record = TreeRecord.of(tree, texts, "p", "q", token_text=lambda t: f"t{t}")
    root, child, reflection = record.nodes
    assert root.tokens is None and reflection.tokens is None
    assert child.tokens == (TokenRecord("t7", 0.9, (("t7", -0.1), ("t3", -2.5))),
                            TokenRecord("t8", 0.6, (("t8", -0.5), ("t4", -1.0))))
    again = TreeRecord.from_json(json.loads(json.dumps(record.to_json())), "tree")
    assert again == record


@pytest.mark.parametrize("tokens", ["abc", [{"text": "a"}], [{"text": "a", "confidence": 0.5,
                                                              "top": [["b"]]}]])
def test_a_malformed_token_list_names_its_node(tokens):
    data = json.loads(json.dumps(TreeRecord.of(scored_tree(), texts, "p", "q").to_json()))
    data["nodes"][1]["tokens"] = tokens
    with pytest.raises(MarcoError, match="tree: node 1: token"):
        TreeRecord.from_json(data, "tree")
