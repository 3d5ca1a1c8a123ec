"""One problem's search tree: statistics in arrays, selection and backup as small functions.

Node 0 is the root (the prompt). A node is a reasoning state: the token ids its
action appended to its parent's path. ``visits_n`` and ``value_sum_n`` hold the
backed-up rollout values; ``children_nc`` lists child ids (-1: empty slot).
``kind_n`` indexes ``kinds``: v1's root/action/reflection, or a v2 action
tree's node types. Arrays grow by doubling (nodes, and children per node), so
a tree never needs a size up front.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

ROOT = 0
KINDS = ("root", "action", "reflection")
OPEN, ANSWER, CUT = 0, 1, 2  # finish_n: not terminal, ended the answer, hit the token budget
FINISHES = ("open", "answer", "cut")
# (parent visits, children's visits, children's value sums) -> children's scores
SelectionRule = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What valued a new node: why it ends (``OPEN``: it does not), the value its
    rollout (or answer) got, whether that rollout ended the answer, the
    verifier's verdict, and the rollout's tokens (v1; v2 nodes have none)."""

    finish: int = OPEN
    value: float = math.nan
    finished: bool = False
    correct: bool | None = None
    rollout: tuple[int, ...] | list[int] = ()


@dataclasses.dataclass(frozen=True)
class ActionScores:
    """What the model made of each token of a node's action, kept for a person reading
    the tree: Marco-o1's confidence in the token chosen, and the top-k tokens it could
    have chosen (ids and untempered log-probabilities). A node whose tokens the search
    wrote itself (a reflection, v2's re-encoded steps) has none."""

    confidence: np.ndarray  # (tokens,)
    top_ids: np.ndarray  # (tokens, k)
    top_logprobs: np.ndarray  # (tokens, k)


@dataclasses.dataclass
class Tree:
    max_children: int
    parent_n: np.ndarray
    children_nc: np.ndarray
    visits_n: np.ndarray
    value_sum_n: np.ndarray
    depth_n: np.ndarray
    terminal_n: np.ndarray
    kind_n: np.ndarray  # index into KINDS
    finish_n: np.ndarray  # index into FINISHES: why a terminal node ends
    tokens: list[list[int]]  # per node: the ids its action appended (root: the prompt)
    rollouts: list[list[int]]  # per node: the rollout that valued it (may be empty)
    rollout_value_n: np.ndarray
    rollout_finished_n: np.ndarray  # the node's rollout ended the answer (not cut off)
    correct_n: np.ndarray  # the verifier on the node's answer: 1 right, 0 wrong, -1 unchecked
    size: int = 1
    kinds: tuple[str, ...] = KINDS
    action_scores: list[ActionScores | None] = dataclasses.field(default_factory=lambda: [None])

    @classmethod
    def new(cls, prompt: list[int], max_children: int, capacity: int = 64,
            kinds: tuple[str, ...] = KINDS) -> "Tree":
        return cls(max_children, np.full(capacity, -1, np.int32),
                   np.full((capacity, max_children), -1, np.int32), np.zeros(capacity, np.int32),
                   np.zeros(capacity, np.float64), np.zeros(capacity, np.int32),
                   np.zeros(capacity, bool), np.zeros(capacity, np.int8),
                   np.zeros(capacity, np.int8), [list(prompt)], [[]], np.full(capacity, np.nan),
                   np.zeros(capacity, bool), np.full(capacity, -1, np.int8), kinds=tuple(kinds))

    def _grow(self) -> None:
        def grow(a: np.ndarray, fill) -> np.ndarray:
            extra = np.full((len(a),) + a.shape[1:], fill, a.dtype)
            return np.concatenate([a, extra])
        self.parent_n = grow(self.parent_n, -1)
        self.children_nc = grow(self.children_nc, -1)
        self.visits_n = grow(self.visits_n, 0)
        self.value_sum_n = grow(self.value_sum_n, 0.0)
        self.depth_n = grow(self.depth_n, 0)
        self.terminal_n = grow(self.terminal_n, False)
        self.kind_n = grow(self.kind_n, 0)
        self.finish_n = grow(self.finish_n, OPEN)
        self.rollout_value_n = grow(self.rollout_value_n, np.nan)
        self.rollout_finished_n = grow(self.rollout_finished_n, False)
        self.correct_n = grow(self.correct_n, -1)

    def add_child(self, parent: int, tokens: list[int], kind: str = "action",
                  outcome: Outcome | None = None, scores: ActionScores | None = None) -> int:
        """A new child of ``parent``: its action's tokens, its kind, what valued it
        (none yet: an open node; terminal when its outcome ends it) and the model's
        scores of its tokens (when the model chose them)."""
        slots = np.flatnonzero(self.children_nc[parent] < 0)
        if not len(slots):  # e.g. v2's reflections, added after a wrong answer
            slots = [self.max_children]
            self.children_nc = np.concatenate(
                [self.children_nc, np.full_like(self.children_nc, -1)], axis=1)
            self.max_children *= 2
        if self.size == len(self.parent_n):
            self._grow()
        node = self.size
        self.size += 1
        self.parent_n[node] = parent
        self.children_nc[parent, slots[0]] = node
        self.depth_n[node] = self.depth_n[parent] + 1
        self.kind_n[node] = self.kinds.index(kind)
        self.tokens.append(list(tokens))
        self.rollouts.append([])
        self.action_scores.append(scores)
        if outcome is not None:
            self.terminal_n[node] = outcome.finish != OPEN
            self.finish_n[node] = outcome.finish
            self.rollout_value_n[node] = outcome.value
            self.rollout_finished_n[node] = outcome.finished
            self.correct_n[node] = -1 if outcome.correct is None else int(outcome.correct)
            self.rollouts[node] = list(outcome.rollout)
        return node

    def end(self, node: int, finish: int, value: float) -> None:
        """Make ``node`` terminal (e.g. cut: no room left to continue it)."""
        self.terminal_n[node] = True
        self.finish_n[node] = finish
        self.rollout_value_n[node] = value

    def children(self, node: int) -> np.ndarray:
        row = self.children_nc[node]
        return row[row >= 0]

    def path(self, node: int) -> list[int]:
        """Node ids from the root to ``node``."""
        out = [node]
        while self.parent_n[out[-1]] >= 0:
            out.append(int(self.parent_n[out[-1]]))
        return out[::-1]

    def path_tokens(self, node: int) -> list[int]:
        """The full context of ``node``: prompt plus every action on its path."""
        return [t for n in self.path(node) for t in self.tokens[n]]

    def path_length(self, node: int) -> int:
        """Tokens in ``node``'s full context (the length of :meth:`path_tokens`)."""
        return sum(len(self.tokens[n]) for n in self.path(node))

    def kind(self, node: int) -> str:
        return self.kinds[self.kind_n[node]]

    def nearest(self, node: int, kind: str) -> int | None:
        """The closest proper ancestor of ``node`` of type ``kind``, if any."""
        while (node := int(self.parent_n[node])) >= 0:
            if self.kind(node) == kind:
                return node
        return None

    def mean_value(self, node: int) -> float:
        return self.value_sum_n[node] / self.visits_n[node] if self.visits_n[node] else math.nan


def uct(c_uct: float) -> SelectionRule:
    """UCT = mean value + c * sqrt(ln N_parent / n_child); unvisited children score +inf."""

    def scores(parent_visits: int, visits_c: np.ndarray, value_sum_c: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            explore = c_uct * np.sqrt(np.log(max(parent_visits, 1)) / visits_c)
            score_c = value_sum_c / visits_c + explore
        return np.where(visits_c > 0, score_c, np.inf)

    return scores


def select_child(tree: Tree, node: int, rule: SelectionRule) -> int:
    """The child of ``node`` that ``rule`` scores highest (ties: the first)."""
    kids = tree.children(node)
    scores = rule(int(tree.visits_n[node]), tree.visits_n[kids], tree.value_sum_n[kids])
    return int(kids[int(np.argmax(scores))])


def select_leaf(tree: Tree, rule: SelectionRule) -> int:
    """Descend from the root by ``rule`` to a node without children; terminal nodes
    are returned as they are (they cannot be expanded)."""
    node = ROOT
    while not tree.terminal_n[node]:
        if not len(tree.children(node)):
            return node
        node = select_child(tree, node, rule)
    return node


def backup(tree: Tree, node: int, value: float) -> None:
    """Add one visit with ``value`` to ``node`` and every ancestor."""
    for n in tree.path(node):
        tree.visits_n[n] += 1
        tree.value_sum_n[n] += value


def most_visited_path(tree: Tree) -> list[int]:
    """Follow the most-visited child (ties: higher mean value, then first) from the root."""
    path = [ROOT]
    while len(kids := tree.children(path[-1])):
        visits = tree.visits_n[kids]
        means = np.where(visits > 0, tree.value_sum_n[kids] / np.maximum(visits, 1), -np.inf)
        order = np.lexsort((-means, -visits))  # primary: visits, secondary: mean
        path.append(int(kids[order[0]]))
    return path
