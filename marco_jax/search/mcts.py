"""Marco-o1's MCTS as a client of the inference engine: many trees, each in
its own order, all sharing the engine's decode slots.

A tree selects a leaf (UCT), submits ``children`` continuations of it, and
once all of them are back adds the children, backs up their values and
selects again at once, whatever the other trees are doing (each tree is a
generator program; :class:`marco_jax.search.searcher.Searcher` runs many over
the engine and streams problems through). Each continuation is a plain
request for the path's tokens: the engine's prefix cache finds the blocks
that earlier requests of the tree wrote, so the search never handles KV
blocks. A row's seed derives from
(config seed, problem seed, node, child), so a tree does not depend on what
else is in flight.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from marco_jax.grading import final_answer
from marco_jax.engine.engine import Completion
from marco_jax.search.config import SearchConfig
from marco_jax.search.driver import Call, SearchProgram, row_seed
from marco_jax.search.environment import ReasoningEnv
from marco_jax.search.results import Candidate, Problem, SearchResult, choose_best
from marco_jax.search.rewards import Reward
from marco_jax.search.tree import (ANSWER, CUT, OPEN, ROOT, Outcome, ActionScores, Tree, backup,
                                   select_leaf, uct)


class MCTS:
    """Marco-o1 v1's search (a :class:`marco_jax.search.searcher.Algorithm`):
    contexts up to ``max_model_len`` tokens, the engines' limit."""

    models = frozenset({"policy"})

    def __init__(self, tokenizer: Any, cfg: SearchConfig, max_model_len: int):
        self.cfg, self.max_model_len = cfg, max_model_len
        self.env = ReasoningEnv(tokenizer, cfg)
        self.reward = Reward(cfg)
        self.rule = uct(cfg.c_uct)
        self.width = cfg.children
        self.decode = lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True)

    def program(self, problem: Problem,
                on_grow: Callable[[Tree], None] | None = None) -> SearchProgram:
        """One problem's search: select a leaf, ask for its children, expand and
        back up, ``iterations`` times (a terminal leaf counts its own value again)
        or until a stopping rule holds. ``on_grow`` sees the tree after each
        expansion (a server showing it live)."""
        cfg, prompt = self.cfg, problem.prompt
        tree = Tree.new(prompt, cfg.children * (1 + cfg.reflection))
        generated, iteration, correct = 0, 0, 0
        while iteration < cfg.iterations and not cfg.stop_early(iteration, correct, generated):
            iteration += 1
            leaf = select_leaf(tree, self.rule)
            length = tree.path_length(leaf)
            room = min(cfg.max_tokens - (length - len(prompt)), self.max_model_len - length)
            if not tree.terminal_n[leaf] and room <= 0:  # e.g. a reflection at the budget
                tree.end(leaf, CUT, 0.0)
            if tree.terminal_n[leaf]:
                backup(tree, leaf, float(tree.rollout_value_n[leaf]))
                continue
            path = tree.path_tokens(leaf)
            completions = yield [Call(path, min(cfg.call_tokens, room),
                                      row_seed(cfg.seed, problem.seed, leaf, k), cfg.temperature,
                                      cfg.top_k, cfg.top_p) for k in range(cfg.children)]
            correct += self._expand(tree, leaf, problem, completions)
            if on_grow is not None:
                on_grow(tree)
            generated += sum(len(c.tokens) for c in completions)
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
            if whole and step.ended:
                finish = ANSWER
            elif used_before + len(step.action) >= self.cfg.max_tokens:
                finish = CUT
            else:
                finish = OPEN
            n = len(step.action)
            scores = ActionScores(completion.confidences[:n], completion.top_ids[:n],
                                 completion.top_logprobs[:n])
            child = tree.add_child(leaf, step.action, outcome=Outcome(
                finish, value, step.ended, verdict, step.rollout), scores=scores)
            backup(tree, child, value)
            if step.reflection is not None:
                tree.add_child(leaf, step.reflection, kind="reflection")
            elif self.cfg.reflect_wrong != "off" and step.ended and verdict is False:
                self._reflect(tree, leaf, completion.tokens, final_answer(text))
        return correct

    def _reflect(self, tree: Tree, leaf: int, chain: list[int], answer: str | None) -> None:
        """v2's dynamic reflection on a wrong answer: a sibling of the chain that
        continues it, or a child of the root that starts over (one per answer)."""
        tokens = self.env.wrong_answer_reflection(chain, answer)
        parent = leaf if self.cfg.reflect_wrong == "continue" else ROOT
        if all(tree.tokens[c] != tokens for c in tree.children(parent)):
            tree.add_child(parent, tokens, kind="reflection")

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
