"""Marco-o1 v2's tree search: tagged nodes grown by an action tree, answers
checked against the ground truth, reflection added where an answer was wrong.

One rollout descends from the root: a node not yet expanded gets all its
children at once (per child type one prefill and ``count`` samples, each stopping
at the type's closing tag or at any other tag it starts), then the first
unvisited child is taken, else the UCT best; this repeats until an answer
node. Its reward (by default the verifier's 1/0) is backed up to the root. A
wrong answer, the first time it is reached, gives its nearest ancestor of type
``reflect_under`` the configured reflection children, so reflection grows only
where a real mistake happened.
A tree ends after ``iterations`` rollouts or when a stopping rule holds (v2: 8
correct answers; or 4 after 32 rollouts).

The context of a node is the chat prompt (instruction + question) followed by
the texts of its path, then its own opening tag and prefill; every node's text
is ``<tag>prefill generated</tag>\\n``. Where this differs from v2's released
generator: the correct count is of distinct answer nodes (v2 counts every
rewarded rollout, revisits included); a wrong answer adds its reflection once
(v2: on every revisit); a node whose context is at the token budget ends its
path with value 0 (v2 has no budget); sampling seeds derive from the problem
and node, so a tree does not depend on what else runs.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping

from marco_jax.engine.engine import Completion
from marco_jax.search.action_tree import ActionTree
from marco_jax.search.config import SearchConfig
from marco_jax.search.driver import Call, SearchProgram, row_seed
from marco_jax.search.results import Candidate, Problem, SearchResult, choose_best
from marco_jax.search.rewards import Reward
from marco_jax.search.tree import ANSWER, CUT, ROOT, Outcome, Tree, backup, select_child, uct

PREFILL_STREAM = 1 << 20  # seeds for prefill choices, apart from the sampling seeds


class TaggedMCTS:
    """Marco-o1 v2's search (a :class:`marco_jax.search.searcher.Algorithm`) over
    the models its action tree names (``policy``, and ``checker`` for node types
    assigned to a second model); contexts up to ``max_model_len`` tokens."""

    def __init__(self, tokenizer: Any, cfg: SearchConfig, plan: ActionTree, max_model_len: int):
        self.cfg, self.plan, self.max_model_len = cfg, plan, max_model_len
        self.models = frozenset({"policy", *plan.models})
        self.reward = Reward(cfg)
        self.rule = uct(cfg.c_uct)
        self.kinds = ("root", *plan.types)
        self.encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
        self.decode = lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True)
        # the most children one expansion adds: calls per expansion, and a tree's width
        self.width = max([*(sum(t.children.values()) for t in plan.types.values()),
                          sum(plan.root.values())])

    def program(self, problem: Problem,
                on_grow: Callable[[Tree], None] | None = None) -> SearchProgram:
        """One problem's tree: rollouts from the root down to an answer, growing
        each node's children on first visit, until the stopping rules hold;
        ``on_grow`` sees the tree after each rollout and reflection."""
        cfg, plan = self.cfg, self.plan
        width = self.width + sum(plan.reflection.values())
        tree = Tree.new(problem.prompt, width, kinds=self.kinds)
        grown: set[int] = set()  # nodes whose children exist
        reached: set[int] = set()  # answers already counted
        generated, rollouts, correct = 0, 0, 0
        while rollouts < cfg.iterations and not cfg.stop_early(rollouts, correct, generated):
            node = ROOT
            while not tree.terminal_n[node]:
                if node not in grown:
                    grown.add(node)
                    children = plan.root if node == ROOT else plan.types[tree.kind(node)].children
                    generated += yield from self._grow(tree, node, children, problem)
                    if not len(tree.children(node)):  # nothing fits the token budget
                        tree.end(node, CUT, 0.0)
                        break
                node = select_child(tree, node, self.rule)  # unvisited children first
            backup(tree, node, float(tree.rollout_value_n[node]))
            rollouts += 1
            if on_grow is not None:
                on_grow(tree)
            if node in reached or tree.finish_n[node] != ANSWER:
                continue
            reached.add(node)
            if tree.correct_n[node] == 1:
                correct += 1
                continue
            wrong = tree.correct_n[node] == 0
            anchor = None
            if wrong and plan.reflect_under:
                anchor = tree.nearest(node, plan.reflect_under)
            if anchor is not None:
                generated += yield from self._grow(tree, anchor, plan.reflection, problem)
                if on_grow is not None:
                    on_grow(tree)
        candidates = [Candidate(n, tree.path_tokens(n)[len(problem.prompt):],
                                float(tree.rollout_value_n[n]), True,
                                None if tree.correct_n[n] < 0 else bool(tree.correct_n[n]))
                      for n in range(1, tree.size) if tree.finish_n[n] == ANSWER]
        path, tokens, value = choose_best(tree, candidates, len(problem.prompt))
        return SearchResult(tree, path, tokens, value, candidates, generated, rollouts=rollouts,
                            correct=correct, stopped_early=rollouts < cfg.iterations)

    def _grow(self, tree: Tree, parent: int, children: Mapping[str, int],
              problem: Problem) -> SearchProgram:
        """Give ``parent`` its children: fixed texts at once, generated ones from one
        round of calls (each type's prefill drawn once, shared by its samples).
        Returns the number of generated tokens."""
        cfg = self.cfg
        context = tree.path_tokens(parent)
        room = min(cfg.max_tokens - (len(context) - len(problem.prompt)),
                   self.max_model_len - len(context))
        slot = len(tree.children(parent))  # seeds per child position under this parent
        plans: list[tuple[str, str, int]] = []  # (type, prefill, first call index or -1)
        calls: list[Call] = []
        for name, count in children.items():
            kind = self.plan.types[name]
            prefill = kind.prefill(random.Random(row_seed(cfg.seed, problem.seed, parent,
                                                          PREFILL_STREAM + slot)))
            if kind.fixed:
                plans += [(name, prefill, -1)] * count
                slot += count
                continue
            head = self.encode(kind.open + prefill)
            budget = min(cfg.call_tokens, room - len(head))
            if budget < 1:
                slot += count
                continue
            for k in range(count):
                plans.append((name, prefill, len(calls)))
                calls.append(Call(context + head, budget,
                                  row_seed(cfg.seed, problem.seed, parent, slot + k),
                                  cfg.temperature, cfg.top_k, cfg.top_p, kind.model))
            slot += count
        completions: list[Completion] = []
        if calls:
            completions = yield calls
        for name, prefill, index in plans:
            kind = self.plan.types[name]
            done = completions[index] if index >= 0 else None
            body = self.plan.node_body(self.decode(done.tokens)) if done else ""
            tokens = self.encode(kind.text(prefill, body))
            outcome = None
            if kind.terminal:
                answer = self.decode(tree.path_tokens(parent)[len(problem.prompt):] + tokens)
                value, verdict = self.reward(done.confidence if done else 0.0, answer,
                                             problem.gold)
                outcome = Outcome(ANSWER, value, True, verdict)
            tree.add_child(parent, tokens, kind=name, outcome=outcome)
        return sum(len(c.tokens) for c in completions)
