"""Marco-o1's MCTS as a client of the inference engine: many trees, each in
its own order, all sharing the engine's decode slots.

A tree selects a leaf (UCT), submits ``children`` continuations of it, and
once all of them are back adds the children, backs up their values and
selects again at once, whatever the other trees are doing. Problems stream
through: when a tree finishes its iterations its result is handed out and the
next problem starts, so the slots stay full for the whole input, not per
batch (each tree is a generator program that :func:`driver.drive`
multiplexes over the engine). Each continuation is a plain request for the path's tokens: the
engine's prefix cache finds the blocks that earlier requests of the tree
wrote, so the search never handles KV blocks. A row's seed derives from
(config seed, problem seed, node, child), so a tree does not depend on what
else is in flight.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from marco_jax.answers import extract_answer
from marco_jax.engine.engine import Completion, Engine
from marco_jax.search.config import SearchConfig
from marco_jax.search.driver import (Call, Program, default_trees_in_flight, drive,
                                     engine_stats, row_seed, stats_line)
from marco_jax.search.environment import ReasoningEnv
from marco_jax.search.results import Candidate, Problem, SearchResult, choose_best
from marco_jax.search.rewards import Reward
from marco_jax.search.tree import ANSWER, CUT, ROOT, Tree, backup, select_leaf


class Search:
    """Runs trees through one :class:`Engine`, ``max_trees`` of them at a time."""

    def __init__(self, engine: Engine, tokenizer: Any, cfg: SearchConfig,
                 max_trees: int | None = None):
        self.engine, self.cfg = engine, cfg
        self.env = ReasoningEnv(tokenizer, cfg)
        self.reward = Reward(cfg)
        self.decode = lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True)
        self.max_trees = max_trees or default_trees_in_flight(engine.config.slots, cfg.children)
        self.generated_tokens = 0
        self.requests = 0

    def stats(self) -> dict:
        """Engine figures of the run so far (see :func:`driver.engine_stats`)."""
        return engine_stats(self.engine, self.requests)

    def summary(self) -> str:
        return stats_line(self.stats())

    def run(self, prompts: Sequence[list[int]], problem_seeds: Sequence[int] | None = None,
            golds: Sequence[str | None] | None = None) -> list[SearchResult]:
        """Search every prompt; results in input order."""
        seeds = list(range(len(prompts))) if problem_seeds is None else list(problem_seeds)
        golds = [None] * len(prompts) if golds is None else list(golds)
        out = dict(self.stream(Problem(i, list(p), s, g)
                               for i, (p, s, g) in enumerate(zip(prompts, seeds, golds))))
        return [out[i] for i in range(len(prompts))]

    def stream(self, problems: Iterable[Problem], on_start: Callable[[Any], None] | None = None,
               ) -> Iterator[tuple[Any, SearchResult]]:
        """Search problems, yielding ``(key, result)`` as each tree finishes (not in
        input order)."""
        def programs():
            for problem in problems:
                self.reward.check_gold(problem.key, problem.gold)
                yield problem.key, self.program(problem)
        return drive({"policy": self.engine}, programs(), self.max_trees, on_start)

    def program(self, problem: Problem,
                on_grow: Callable[[Tree], None] | None = None) -> Program:
        """One problem's search: select a leaf, ask for its children, expand and
        back up, ``iterations`` times (a terminal leaf counts its own value again)
        or until a stopping rule holds. ``on_grow`` sees the tree after each
        expansion (a server showing it live)."""
        cfg, prompt = self.cfg, problem.prompt
        tree = Tree.new(prompt, cfg.children * (1 + cfg.reflection))
        generated, iteration, correct = 0, 0, 0
        while iteration < cfg.iterations and not cfg.stop_early(iteration, correct, generated):
            iteration += 1
            leaf = select_leaf(tree, cfg.c_uct)
            length = tree.path_length(leaf)
            room = min(cfg.max_tokens - (length - len(prompt)),
                       self.engine.config.max_model_len - length)
            if not tree.terminal_n[leaf] and room <= 0:  # e.g. a reflection at the budget
                tree.terminal_n[leaf] = True
                tree.finish_n[leaf] = CUT
                tree.rollout_value_n[leaf] = 0.0
            if tree.terminal_n[leaf]:
                backup(tree, leaf, float(tree.rollout_value_n[leaf]))
                continue
            path = tree.path_tokens(leaf)
            self.requests += cfg.children
            completions = yield [Call(path, min(cfg.call_tokens, room),
                                      row_seed(cfg.seed, problem.seed, leaf, k), cfg.temperature,
                                      cfg.top_k, cfg.top_p) for k in range(cfg.children)]
            correct += self._expand(tree, leaf, problem, completions)
            if on_grow is not None:
                on_grow(tree)
            generated += sum(len(c.tokens) for c in completions)
        self.generated_tokens += generated
        candidates = self._candidates(tree, problem)
        path, tokens, value = choose_best(tree, candidates, len(prompt))
        return SearchResult(tree, path, tokens, value, candidates, generated,
                            rollouts=int(tree.visits_n[0]), correct=correct,
                            stopped_early=iteration < cfg.iterations)

    def _expand(self, tree: Tree, leaf: int, problem: Problem,
                completions: list[Completion]) -> int:
        """Add the children (and reflections) of ``leaf``; returns how many of their
        rollouts the verifier accepted."""
        context = tree.path_tokens(leaf)
        used_before = len(context) - len(problem.prompt)
        correct = 0
        for completion in completions:
            step = self.env.step(completion.tokens, completion.confidences,
                                 completion.finish_reason)
            value, verdict = step.value, None
            if self.cfg.needs_gold or problem.gold is not None:
                text = self.decode(context[len(problem.prompt):] + completion.tokens)
                value, verdict = self.reward(step.value, text if step.ended else None,
                                             problem.gold)
            correct += bool(verdict)
            whole = not step.rollout
            at_budget = used_before + len(step.action) >= self.cfg.max_tokens
            terminal = (whole and step.ended) or at_budget
            child = tree.add_child(leaf, step.action, terminal)
            tree.finish_n[child] = (ANSWER if whole and step.ended else CUT) if terminal else 0
            tree.rollouts[child] = step.rollout
            tree.rollout_value_n[child] = value
            tree.rollout_finished_n[child] = step.ended
            tree.correct_n[child] = -1 if verdict is None else int(verdict)
            backup(tree, child, value)
            if step.reflection is not None:
                tree.add_child(leaf, step.reflection, False, kind="reflection")
            elif self.cfg.reflect_wrong != "off" and step.ended and verdict is False:
                self._reflect(tree, leaf, completion.tokens, extract_answer(text))
        return correct

    def _reflect(self, tree: Tree, leaf: int, chain: list[int], answer: str | None) -> None:
        """v2's dynamic reflection on a wrong answer: a sibling of the chain that
        continues it, or a child of the root that starts over (one per answer)."""
        tokens = self.env.wrong_answer_reflection(chain, answer)
        parent = leaf if self.cfg.reflect_wrong == "continue" else ROOT
        if all(tree.tokens[c] != tokens for c in tree.children(parent)):
            tree.add_child(parent, tokens, False, kind="reflection")

    def _candidates(self, tree: Tree, problem: Problem) -> list[Candidate]:
        """Every valued action node: its path plus the rollout that valued it."""
        out = []
        for node in range(1, tree.size):
            if tree.kind(node) == "action" and not np.isnan(tree.rollout_value_n[node]):
                path = tree.path_tokens(node)[len(problem.prompt):]
                verdict = int(tree.correct_n[node])
                out.append(Candidate(node, path + tree.rollouts[node],
                                     float(tree.rollout_value_n[node]),
                                     bool(tree.rollout_finished_n[node]),
                                     None if verdict < 0 else bool(verdict)))
        return out
