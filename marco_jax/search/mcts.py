"""Marco-o1's MCTS as a client of the inference engine: many trees, each in
its own order, all sharing the engine's decode slots.

A tree selects a leaf (UCT), submits ``children`` continuations of it, and
once all of them are back adds the children, backs up their values and
selects again at once, whatever the other trees are doing. Problems stream
through: when a tree finishes its iterations its result is handed out and the
next problem starts, so the slots stay full for the whole input, not per
batch. Each continuation is a plain request for the path's tokens: the
engine's prefix cache finds the blocks that earlier requests of the tree
wrote, so the search never handles KV blocks. A row's seed derives from
(config seed, problem seed, node, child), so a tree does not depend on what
else is in flight.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from marco_jax.engine.engine import Completion, Engine
from marco_jax.search.config import SearchConfig
from marco_jax.search.environment import ReasoningEnv
from marco_jax.search.tree import (ANSWER, CUT, Tree, backup, most_visited_path, select_leaf)


@dataclasses.dataclass
class Candidate:
    """A complete answer the search produced: a node's path plus its rollout."""

    node: int
    tokens: list[int]  # generated tokens (after the prompt)
    value: float
    finished: bool  # ended by EOS or a stop string, not cut off by the token budget


@dataclasses.dataclass
class SearchResult:
    tree: Tree
    best_path: list[int]
    best_tokens: list[int]  # generated tokens of the chosen answer (after the prompt)
    best_value: float
    candidates: list[Candidate]
    generated_tokens: int


def row_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] & 0x7FFFFFFF)


@dataclasses.dataclass
class _TreeRun:
    key: Any
    tree: Tree
    seed: int
    prompt_len: int
    iteration: int = 0
    leaf: int = -1
    results: list[Completion | None] = dataclasses.field(default_factory=list)
    generated: int = 0


class Search:
    """Runs trees through one :class:`Engine`, ``max_trees`` of them at a time."""

    def __init__(self, engine: Engine, tokenizer: Any, cfg: SearchConfig,
                 max_trees: int | None = None):
        self.engine, self.cfg = engine, cfg
        self.env = ReasoningEnv(tokenizer, cfg)
        self.max_trees = max_trees or math.ceil(2 * engine.config.slots / cfg.children)
        self.generated_tokens = 0
        self.requests = 0

    def stats(self) -> dict:
        """Engine figures of the run so far: slot utilisation, prefilled and cached
        context tokens per generated token, compile/prefill/decode seconds."""
        stats = self.engine.stats
        generated = max(stats.kept_tokens, 1)
        return {"slot_utilisation": round(stats.utilisation, 4),
                "generated_tokens": stats.kept_tokens, "requests": self.requests,
                "prefilled_per_generated": round(stats.prefilled_tokens / generated, 4),
                "cached_per_generated": round(stats.cached_tokens / generated, 4),
                "decode_calls": stats.decode_calls, "prefill_calls": stats.prefill_calls,
                "compile_s": round(stats.compile_s, 2), "prefill_s": round(stats.prefill_s, 2),
                "decode_s": round(stats.decode_s, 2), "programs": self.engine.num_programs}

    def summary(self) -> str:
        s = self.stats()
        return (f"slot utilisation {s['slot_utilisation']:.2f}, {s['generated_tokens']} tokens "
                f"generated, {s['prefilled_per_generated']:.2f} prefilled per generated, "
                f"{s['decode_calls']} decode calls")

    def run(self, prompts: Sequence[list[int]], problem_seeds: Sequence[int] | None = None,
            ) -> list[SearchResult]:
        """Search every prompt; results in input order."""
        seeds = list(range(len(prompts))) if problem_seeds is None else list(problem_seeds)
        out = dict(self.stream(zip(range(len(prompts)), prompts, seeds)))
        return [out[i] for i in range(len(prompts))]

    def stream(self, problems: Iterable[tuple[Any, list[int], int]],
               on_start: Callable[[Any], None] | None = None,
               ) -> Iterator[tuple[Any, SearchResult]]:
        """Search ``(key, prompt tokens, problem seed)`` triples, yielding
        ``(key, result)`` as each tree finishes (not in input order)."""
        source = iter(problems)
        active: list[_TreeRun] = []
        owners: dict[int, tuple[_TreeRun, int]] = {}
        exhausted = False
        while True:
            while not exhausted and len(active) < self.max_trees:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                key, prompt, seed = item
                run = _TreeRun(key, Tree.new(prompt, self.cfg.children * (1 + self.cfg.reflection)),
                               int(seed), len(prompt))
                if on_start:
                    on_start(key)
                active.append(run)
                self._advance(run, owners)
            for run in [r for r in active if r.iteration == self.cfg.iterations]:
                active.remove(run)
                yield run.key, self._result(run)
            if not active:
                if exhausted:
                    return
                continue
            for completion in self.engine.step():
                run, k = owners.pop(completion.request_id)
                run.results[k] = completion
            for run in active:
                if run.results and all(r is not None for r in run.results):
                    self._expand(run)
                    self._advance(run, owners)

    def _advance(self, run: _TreeRun, owners: dict[int, tuple[_TreeRun, int]]) -> None:
        """Select leaves until one is expanded (its continuations submitted) or
        the tree has run all its iterations."""
        cfg, tree = self.cfg, run.tree
        while run.iteration < cfg.iterations:
            leaf = select_leaf(tree, cfg.c_uct)
            length = tree.path_length(leaf)
            room = min(cfg.max_tokens - (length - run.prompt_len),
                       self.engine.config.max_model_len - length)
            if not tree.terminal_n[leaf] and room <= 0:  # e.g. a reflection at the budget
                tree.terminal_n[leaf] = True
                tree.finish_n[leaf] = CUT
                tree.rollout_value_n[leaf] = 0.0
            if tree.terminal_n[leaf]:  # nothing to expand: count its own value again
                backup(tree, leaf, float(tree.rollout_value_n[leaf]))
                run.iteration += 1
                continue
            path = tree.path_tokens(leaf)
            run.leaf, run.results = leaf, [None] * cfg.children
            for k in range(cfg.children):
                rid = self.engine.submit(path, min(cfg.call_tokens, room),
                                         temperature=cfg.temperature, top_k=cfg.top_k,
                                         top_p=cfg.top_p, seed=row_seed(cfg.seed, run.seed, leaf, k))
                owners[rid] = (run, k)
            self.requests += cfg.children
            return

    def _expand(self, run: _TreeRun) -> None:
        tree, leaf = run.tree, run.leaf
        used_before = tree.path_length(leaf) - run.prompt_len
        for completion in run.results:
            step = self.env.step(completion.tokens, completion.confidences,
                                 completion.finish_reason)
            whole = not step.rollout
            at_budget = used_before + len(step.action) >= self.cfg.max_tokens
            terminal = (whole and step.ended) or at_budget
            child = tree.add_child(leaf, step.action, terminal)
            tree.finish_n[child] = (ANSWER if whole and step.ended else CUT) if terminal else 0
            tree.rollouts[child] = step.rollout
            tree.rollout_value_n[child] = step.value
            tree.rollout_finished_n[child] = step.ended
            backup(tree, child, step.value)
            if step.reflection is not None:
                tree.add_child(leaf, step.reflection, False, kind="reflection")
            run.generated += len(completion.tokens)
        self.generated_tokens += sum(len(c.tokens) for c in run.results)
        run.results = []
        run.iteration += 1

    def _result(self, run: _TreeRun) -> SearchResult:
        tree = run.tree
        candidates = []
        for node in range(1, tree.size):
            if tree.kind_n[node] == 1 and not np.isnan(tree.rollout_value_n[node]):
                path = tree.path_tokens(node)[run.prompt_len:]
                candidates.append(Candidate(node, path + tree.rollouts[node],
                                            float(tree.rollout_value_n[node]),
                                            bool(tree.rollout_finished_n[node])))
        path = most_visited_path(tree)
        by_node = {c.node: c for c in candidates}
        best = by_node.get(path[-1])
        finished = [c for c in candidates if c.finished]
        if (best is None or not best.finished) and finished:
            # A path the budget cut off is never the answer while a finished one exists.
            best = max(finished, key=lambda c: (tree.visits_n[c.node], c.value))
            path = tree.path(best.node)
        tokens = best.tokens if best else tree.path_tokens(path[-1])[run.prompt_len:]
        return SearchResult(tree, path, tokens, best.value if best else 0.0, candidates,
                            run.generated)
