"""The tree record: one search tree as data, written in one place (a search job's
``--trees`` file, the server's growing tree) and read by every consumer (the data
export, the tree page, the server's tree endpoint, the benchmarks).

On disk a run's trees are JSON lines, one tree a line, with a schema version.
Trees written before the version existed carry no ``schema`` key and read as
version 1, the same layout; fields they lack take their defaults. Reading checks
every node, and an error names the file, the line and the node.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from marco_jax.errors import MarcoError
from marco_jax.files import lines
from marco_jax.search.tree import FINISHES, ActionScores, Tree

SCHEMA = 1


@dataclasses.dataclass(frozen=True)
class TokenRecord:
    """One token of a node's action as the model scored it: its text, Marco-o1's
    confidence in it, and the top alternatives as (text, log-probability), best first."""

    text: str
    confidence: float
    top: tuple[tuple[str, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class NodeRecord:
    """One node: its text (its action's tokens decoded), statistics, kind, how it
    ends, the rollout that valued it and the verifier's verdict."""

    id: int
    parent: int  # -1: a root
    text: str = ""
    visits: int = 0
    value: float | None = None  # mean backed-up value; None: unvisited
    depth: int = 0
    terminal: bool = False
    kind: str = "action"
    finish: str = "open"  # open, answer, cut
    rollout_text: str = ""
    rollout_value: float | None = None
    rollout_finished: bool = False
    correct: bool | None = None
    tokens: tuple[TokenRecord, ...] | None = None  # None: not kept (or not the model's)

    def to_json(self) -> dict:
        """The node as written: ``tokens`` left out when not kept, so files keep their size."""
        data = dataclasses.asdict(self)
        if data["tokens"] is None:
            del data["tokens"]
        return data


@dataclasses.dataclass(frozen=True)
class TreeRecord:
    id: Any
    nodes: tuple[NodeRecord, ...]
    question: str | None = None
    answer: str | None = None  # the gold answer
    chosen_answer: str | None = None
    best_path: tuple[int, ...] = ()
    config: dict | None = None

    @classmethod
    def of(cls, tree: Tree, decode: Callable[[list[int]], str], id: Any, question: str | None,
           answer: str | None = None, chosen_answer: str | None = None,
           best_path: list[int] = (),
           token_text: Callable[[int], str] | None = None) -> "TreeRecord":
        """The record of a live tree; with ``token_text`` (one token id's text), each
        node the model wrote keeps its tokens' scores (:class:`TokenRecord`)."""
        return cls(id, nodes_of(tree, decode, token_text), question, answer, chosen_answer,
                   tuple(best_path))

    def to_json(self) -> dict:
        data = {"schema": SCHEMA, **dataclasses.asdict(dataclasses.replace(self, nodes=()))}
        data["nodes"] = [node.to_json() for node in self.nodes]
        data["best_path"] = list(self.best_path)
        if data["config"] is None:
            del data["config"]
        return data

    @classmethod
    def from_json(cls, data: Any, where: str) -> "TreeRecord":
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            raise MarcoError(f'{where}: no "nodes" list in the tree JSON')
        if data.get("schema", SCHEMA) != SCHEMA:
            raise MarcoError(f"{where}: tree schema {data['schema']!r}; this version reads "
                             f"schema {SCHEMA}")
        nodes = tuple(_node(raw, i, where) for i, raw in enumerate(data["nodes"]))
        ids = {n.id for n in nodes}
        if len(ids) < len(nodes):
            seen: set[int] = set()
            duplicate = next(n.id for n in nodes if n.id in seen or seen.add(n.id))
            raise MarcoError(f"{where}: node {duplicate}: duplicate id")
        if not nodes:
            raise MarcoError(f"{where}: the tree has no nodes")
        for node in nodes:
            if node.parent != -1 and node.parent not in ids:
                raise MarcoError(f"{where}: node {node.id}: parent {node.parent} does not exist")
        best = data.get("best_path") or []
        if not isinstance(best, list):
            raise MarcoError(f"{where}: best_path must be a list of node ids")
        for i in best:
            if not isinstance(i, int) or i not in ids:
                raise MarcoError(f"{where}: best_path node {i} does not exist")
        record = cls(data.get("id"), nodes, data.get("question"), data.get("answer"),
                     data.get("chosen_answer"), tuple(best), data.get("config"))
        record.depths(where)  # every node reachable from a root
        return record

    def children(self) -> dict[int, list[int]]:
        """Children of every node, most visited first (ties: lower id)."""
        visits = {n.id: n.visits for n in self.nodes}
        out: dict[int, list[int]] = {n.id: [] for n in self.nodes}
        for node in self.nodes:
            if node.parent != -1:
                out[node.parent].append(node.id)
        for ids in out.values():
            ids.sort(key=lambda i: (-visits[i], i))
        return out

    def roots(self) -> list[int]:
        return [n.id for n in self.nodes if n.parent == -1]

    def depths(self, where: str = "tree") -> dict[int, int]:
        """Depth of every node from its root, walked iteratively; a node in a
        parent cycle is an error."""
        children = self.children()
        depth = {r: 0 for r in self.roots()}
        stack = list(depth)
        while stack:
            i = stack.pop()
            for c in children[i]:
                depth[c] = depth[i] + 1
                stack.append(c)
        unreached = sorted(set(children) - set(depth))
        if unreached:
            raise MarcoError(f"{where}: node {unreached[0]} is not reachable from a root "
                             "(parent cycle)")
        return depth


def read_trees(path: pathlib.Path) -> list[TreeRecord]:
    """The trees of a search job's ``--trees`` file (JSON lines), of one tree's JSON
    file, or of a directory of those files (how trees were kept before)."""
    if path.is_dir():
        trees = [t for f in sorted(path.glob("*.json")) for t in read_trees(f)]
        if not trees:
            raise MarcoError(f"{path}: no tree files (*.json) in this directory")
        return trees
    if not path.is_file():
        raise MarcoError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MarcoError(f"{path}: not UTF-8 text") from None
    rows = lines(text) if path.suffix == ".jsonl" else [text]
    trees = []
    for number, row in enumerate(rows, 1):
        where = f"{path}:{number}" if path.suffix == ".jsonl" else str(path)
        if not row.strip():
            continue
        try:
            data = json.loads(row)
        except json.JSONDecodeError as e:
            raise MarcoError(f"{where}: invalid JSON: {e}") from None
        trees.append(TreeRecord.from_json(data, where))
    if not trees:
        raise MarcoError(f"{path}: no trees in this file")
    return trees


def token_records(scores: ActionScores, tokens: list[int],
                  token_text: Callable[[int], str]) -> tuple[TokenRecord, ...]:
    """A node's tokens with the model's scores of them."""
    return tuple(
        TokenRecord(token_text(token), round(float(confidence), 4),
                    tuple((token_text(int(i)), round(float(lp), 4))
                          for i, lp in zip(top_ids, top_logprobs)))
        for token, confidence, top_ids, top_logprobs
        in zip(tokens, scores.confidence, scores.top_ids, scores.top_logprobs))


# A tree's per-node statistics arrays, which a node's record reads (a snapshot copies these).
NODE_STATS = ("parent_n", "visits_n", "value_sum_n", "depth_n", "terminal_n", "kind_n",
              "finish_n", "rollout_value_n", "rollout_finished_n", "correct_n")


def mean_value(value_sum: float, visits: int) -> float | None:
    """A node's mean backed-up value; None while it is unvisited."""
    return float(value_sum) / int(visits) if visits else None


def node_record(stats: Mapping[str, np.ndarray], kinds: Sequence[str], n: int, text: str,
                rollout_text: str, tokens: tuple[TokenRecord, ...] | None = None) -> NodeRecord:
    """Node ``n`` read from a tree's statistics arrays (:data:`NODE_STATS`: a live tree's,
    or a snapshot of them) with its texts."""
    rollout_value, correct = float(stats["rollout_value_n"][n]), int(stats["correct_n"][n])
    return NodeRecord(
        n, int(stats["parent_n"][n]), text, int(stats["visits_n"][n]),
        mean_value(stats["value_sum_n"][n], stats["visits_n"][n]), int(stats["depth_n"][n]),
        bool(stats["terminal_n"][n]), kinds[stats["kind_n"][n]],
        FINISHES[stats["finish_n"][n]], rollout_text,
        None if math.isnan(rollout_value) else rollout_value,
        bool(stats["rollout_finished_n"][n]), None if correct < 0 else bool(correct), tokens)


def nodes_of(tree: Tree, decode: Callable[[list[int]], str],
             token_text: Callable[[int], str] | None = None) -> tuple[NodeRecord, ...]:
    """Every node of a live tree as a record (with its tokens' scores: see
    :meth:`TreeRecord.of`)."""
    stats = {name: getattr(tree, name) for name in NODE_STATS}
    out = []
    for n in range(tree.size):
        scores = tree.action_scores[n]
        tokens = None if token_text is None or scores is None else \
            token_records(scores, tree.tokens[n], token_text)
        out.append(node_record(stats, tree.kinds, n, decode(tree.tokens[n]),
                               decode(tree.rollouts[n]), tokens))
    return tuple(out)


def _integer(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _node(raw: Any, index: int, where: str) -> NodeRecord:
    """One node's fields checked; errors name the node id (or its index if it has none)."""
    if not isinstance(raw, dict) or not _integer(raw.get("id")):
        raise MarcoError(f"{where}: node #{index} in the list has no integer id")
    name = f"{where}: node {raw['id']}"
    if not _integer(raw.get("parent")):
        raise MarcoError(f"{name}: no integer parent")
    if not _integer(raw.get("visits", 0)) or not _integer(raw.get("depth", 0)):
        raise MarcoError(f"{name}: visits and depth must be integers")
    for key in ("value", "rollout_value"):
        if not (raw.get(key) is None or _number(raw[key])):
            raise MarcoError(f"{name}: value and rollout_value must be numbers or null")
    for key in ("text", "kind", "rollout_text", "finish"):
        if key in raw and not isinstance(raw[key], str | None):
            raise MarcoError(f"{name}: {key} must be a string")
    if raw.get("correct") not in (None, True, False):
        raise MarcoError(f"{name}: correct must be true, false or null")
    values = {f.name: raw[f.name] for f in dataclasses.fields(NodeRecord)
              if raw.get(f.name) is not None}  # absent or null: the default
    if "tokens" in values:
        values["tokens"] = _tokens(values["tokens"], name)
    values["terminal"] = bool(raw.get("terminal"))
    values["rollout_finished"] = bool(raw.get("rollout_finished"))
    return NodeRecord(**values)


def _tokens(raw: Any, name: str) -> tuple[TokenRecord, ...]:
    """A node's token list checked: each {text, confidence, top: [[text, logprob], ...]}."""
    if not isinstance(raw, list):
        raise MarcoError(f"{name}: tokens must be a list")
    out = []
    for i, token in enumerate(raw):
        top = token.get("top", []) if isinstance(token, dict) else None
        if not (isinstance(token, dict) and isinstance(token.get("text"), str)
                and _number(token.get("confidence")) and isinstance(top, list)
                and all(isinstance(t, list) and len(t) == 2 and isinstance(t[0], str)
                        and _number(t[1]) for t in top)):
            raise MarcoError(f"{name}: token {i} must be {{text, confidence, top: "
                             "[[text, logprob], ...]}")
        out.append(TokenRecord(token["text"], float(token["confidence"]),
                               tuple((t[0], float(t[1])) for t in top)))
    return tuple(out)
