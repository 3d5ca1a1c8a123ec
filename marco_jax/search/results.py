"""What a search takes and gives per problem, whichever algorithm grew the tree:
the problem, its complete answers (candidates) and the chosen one."""

from __future__ import annotations

import dataclasses
from typing import Any

from marco_jax.search.tree import Tree, most_visited_path


@dataclasses.dataclass(frozen=True)
class Problem:
    key: Any
    prompt: list[int]
    seed: int  # every call's seed derives from it, so a tree never depends on its neighbours
    gold: str | None = None  # the answer a verifier reward compares with


@dataclasses.dataclass
class Candidate:
    """A complete answer the search produced: a node's path (plus its rollout, in v1)."""

    node: int
    tokens: list[int]  # generated tokens (after the prompt)
    value: float
    finished: bool  # ended by EOS or a stop string, not cut off by the token budget
    correct: bool | None = None  # the verifier's verdict (None: no gold answer)


@dataclasses.dataclass
class SearchResult:
    tree: Tree
    best_path: list[int]
    best_tokens: list[int]  # generated tokens of the chosen answer (after the prompt)
    best_value: float
    candidates: list[Candidate]
    generated_tokens: int
    rollouts: int = 0  # values backed up (v1: continuations and terminal revisits)
    correct: int = 0  # distinct candidates the verifier accepted
    stopped_early: bool = False  # a stopping rule ended the tree before its iterations


def choose_best(tree: Tree, candidates: list[Candidate], prompt_len: int,
                ) -> tuple[list[int], list[int], float]:
    """The most-visited path's answer: ``(path, generated tokens, value)``. A path
    the token budget cut off is never chosen while a finished answer exists."""
    path = most_visited_path(tree)
    best = next((c for c in candidates if c.node == path[-1]), None)
    finished = [c for c in candidates if c.finished]
    if (best is None or not best.finished) and finished:
        best = max(finished, key=lambda c: (tree.visits_n[c.node], c.value))
        path = tree.path(best.node)
    if best is None:
        return path, tree.path_tokens(path[-1])[prompt_len:], 0.0
    return path, best.tokens, best.value
