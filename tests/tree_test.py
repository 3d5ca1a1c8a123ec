"""UCT selection, backup and the final path on hand-built trees; a selection rule is
a plain function the tree does not know."""

import math

import numpy as np
import pytest

from marco_jax.search.tree import (ANSWER, Outcome, Tree, backup, most_visited_path,
                                   select_leaf, uct)


def small_tree():
    """root -> a (2 visits, values .9 .7), b (1 visit, .2), c (unvisited)."""
    tree = Tree.new([1, 2, 3], max_children=3, capacity=2)  # forces growth
    a = tree.add_child(0, [4])
    b = tree.add_child(0, [5, 6])
    c = tree.add_child(0, [7])
    backup(tree, a, 0.9)
    backup(tree, a, 0.7)
    backup(tree, b, 0.2)
    return tree, a, b, c


def test_backup_counts_every_ancestor():
    tree, a, b, _ = small_tree()
    a1 = tree.add_child(a, [8], outcome=Outcome(ANSWER, 0.5, True))
    backup(tree, a1, 0.5)
    assert tree.visits_n[[0, a, b, a1]].tolist() == [4, 3, 1, 1]
    assert tree.value_sum_n[0] == pytest.approx(0.9 + 0.7 + 0.2 + 0.5)
    assert tree.mean_value(a) == pytest.approx((0.9 + 0.7 + 0.5) / 3)
    assert tree.path(a1) == [0, a, a1] and tree.path_tokens(a1) == [1, 2, 3, 4, 8]
    assert tree.path_length(a1) == 5 and tree.path_length(0) == len(tree.tokens[0])
    assert tree.depth_n[a1] == 2 and math.isnan(tree.mean_value(tree.add_child(a, [9])))


def test_unvisited_children_first_then_uct():
    tree, a, b, c = small_tree()
    assert select_leaf(tree, uct(1.0)) == c
    backup(tree, c, 0.1)
    # Now by hand: N = 4; a: .8 + sqrt(ln4/2); b: .2 + sqrt(ln4/1); c: .1 + sqrt(ln4/1)
    expected = [0.8 + math.sqrt(math.log(4) / 2), 0.2 + math.sqrt(math.log(4)), 0.1 + math.sqrt(math.log(4))]
    scores = uct(1.0)(4, tree.visits_n[[a, b, c]], tree.value_sum_n[[a, b, c]])
    np.testing.assert_allclose(scores, expected)
    assert select_leaf(tree, uct(1.0)) == a  # 1.633 > 1.377 > 1.277
    assert select_leaf(tree, uct(10.0)) == b  # exploration dominates: fewer visits wins


def test_terminal_leaf_is_returned_and_full_nodes_widen():
    tree = Tree.new([1], max_children=1)
    end = tree.add_child(0, [2], outcome=Outcome(ANSWER, 1.0, True))
    backup(tree, end, 1.0)
    assert select_leaf(tree, uct(1.0)) == end
    extra = tree.add_child(0, [3], kind="reflection")
    more = tree.add_child(extra, [4])
    assert list(tree.children(0)) == [end, extra] and tree.children_nc.shape[1] == 2
    assert tree.nearest(more, "reflection") == extra and tree.nearest(more, "root") == 0
    assert tree.nearest(extra, "action") is None and tree.kind(more) == "action"


def test_most_visited_path_breaks_ties_by_value():
    tree, a, b, c = small_tree()
    backup(tree, b, 0.95)  # b: 2 visits, mean .575; a: 2 visits, mean .8
    assert most_visited_path(tree) == [0, a]
    backup(tree, b, 0.9)
    assert most_visited_path(tree) == [0, b]


def test_selection_is_pluggable():
    """A rule that prefers the least-visited child (not UCT) drives the same descent."""
    tree, a, b, c = small_tree()
    backup(tree, c, 0.1)
    least_visited = lambda parent, visits, values: -visits.astype(float)  # noqa: E731
    assert select_leaf(tree, least_visited) == b  # b and c have 1 visit; b comes first
