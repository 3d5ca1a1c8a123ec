"""Marco-o1's MCTS over many problems in lock-step, one sampler call per iteration.

Each iteration selects a leaf in every tree (UCT), and for each leaf samples
``children`` continuations in one batched call over all trees. A continuation
is split on the host into the child's *action* (a mini-step of 32/64 tokens,
or a whole step ending at the step delimiter) and the *rollout* that follows it
to a terminal state (EOS, ``</Output>``) or the token budget. The child's value
is Marco-o1's confidence ``v = mean_i c_i``, with ``c_i = exp(p(t_i)) /
sum_{k<=5} exp(p(t_k))`` computed on device per token; ``reward_tokens``
chooses which tokens count: the rollout's (default; the action's when the
action itself ended the answer), the action's, or both. ``v`` is backed up
from the child to the root.

With ``reflection``, an action that closes the thought (``</Thought>``) gets a
sibling that instead continues the thought with "Wait! Maybe I made some
mistakes! I need to rethink from scratch." for the search to explore.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from marco_jax.errors import MarcoError
from marco_jax.paged import BLOCK, KVPool, PagedRow, generate_paged
from marco_jax.sampler import BATCH_BUCKETS, Generation, Sampler
from marco_jax.search.config import SearchConfig
from marco_jax.search.tree import Tree, backup, most_visited_path, select_leaf

REFLECTION = "Wait! Maybe I made some mistakes! I need to rethink from scratch."
THOUGHT_END = "</Thought>"


@dataclasses.dataclass
class Candidate:
    """A complete answer the search produced: a node's path plus its rollout."""

    node: int
    tokens: list[int]  # generated tokens (after the prompt)
    value: float


@dataclasses.dataclass
class SearchResult:
    tree: Tree
    best_path: list[int]
    best_tokens: list[int]  # generated tokens of the chosen answer (after the prompt)
    candidates: list[Candidate]
    generated_tokens: int


def _row_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] & 0x7FFFFFFF)


class Search:
    """Runs many problems' trees together through one :class:`Sampler`."""

    def __init__(self, sampler: Sampler, tokenizer: Any, cfg: SearchConfig):
        self.sampler, self.tokenizer, self.cfg = sampler, tokenizer, cfg
        self.device_calls = 0
        self.rows_per_call: list[int] = []
        self.prefilled_tokens = 0
        self.generated_tokens = 0
        self.pool: KVPool | None = None

    def generate(self, contexts: Sequence[list[int] | PagedRow], budgets: Sequence[int],
                 seeds: Sequence[int]) -> list[tuple[Generation, int]]:
        """Sample every row, in as few calls as the largest batch bucket allows.

        Rows are token lists, or :class:`PagedRow` s when reusing cached blocks.
        Returns (generation, row index within it) per input row.
        """
        out = []
        largest = BATCH_BUCKETS[-1]
        settings = dict(temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                        top_k=self.cfg.top_k)
        for first in range(0, len(contexts), largest):
            rows = slice(first, first + largest)
            if self.pool is None:
                gen = self.sampler.generate(list(contexts[rows]), list(budgets[rows]),
                                            seed=list(seeds[rows]), **settings)
            else:
                gen = generate_paged(self.sampler, self.pool, contexts[rows], list(budgets[rows]),
                                     seed=list(seeds[rows]), **settings)
            self.device_calls += 1
            self.rows_per_call.append(len(contexts[rows]))
            self.prefilled_tokens += gen.timing.prompt_tokens
            self.generated_tokens += gen.timing.generated_tokens
            out += [(gen, i) for i in range(len(contexts[rows]))]
        return out

    def _max_action(self) -> int:
        cfg = self.cfg
        return min(cfg.mini_step_tokens if cfg.action == "mini_step" else cfg.step_max_tokens,
                   cfg.call_tokens)

    def _cache_leaves(self, trees: list[Tree], leaves: list[tuple[int, int]]) -> None:
        """Prefill leaves that hold no blocks yet (roots, reflections) once each, in
        one call, storing their blocks, so that their children's rows share them."""
        rows = []
        for t, leaf in leaves:
            tree = trees[t]
            path = tree.path(leaf)[:-1]
            tree.blocks[leaf] = self.pool.alloc(len(tree.tokens[leaf]))
            rows.append(PagedRow(*self._held(tree, path), tree.tokens[leaf],
                                 tree.path_length(leaf), tree.blocks[leaf], []))
        self.generate(rows, [1] * len(rows), [0] * len(rows))
        self.generated_tokens -= len(rows)  # the one token each is not kept

    def _held(self, tree: Tree, nodes: list[int], skip_last: bool = False):
        """Block ids and fill counts of ``nodes``' blocks, in path order."""
        block = self.pool.block
        held = [(n, j) for n in nodes for j in range(len(tree.blocks[n]))]
        held = held[:-1] if skip_last else held
        return ([tree.blocks[n][j] for n, j in held],
                [min(block, len(tree.tokens[n]) - block * j) for n, j in held])

    def _paged_rows(self, tree: Tree, leaf: int, count: int) -> list[PagedRow]:
        """``count`` rows continuing a cached ``leaf`` from its path's blocks. The
        leaf's last block is prefilled again (a decode never fed back its final
        token) and rewritten by the first row."""
        path = tree.path(leaf)
        first = (len(tree.blocks[leaf]) - 1) * self.pool.block
        context = tree.path_length(leaf)
        blocks, fills = self._held(tree, path, skip_last=True)
        return [PagedRow(blocks, fills, tree.tokens[leaf][first:], context,
                         tree.blocks[leaf][-1:] if k == 0 else [],
                         self.pool.alloc(self._max_action())) for k in range(count)]

    def _action_length(self, tokens: list[int]) -> int:
        """How many of a continuation's tokens form the child's action."""
        if self.cfg.action == "mini_step":
            return min(self.cfg.mini_step_tokens, len(tokens))
        cap = min(self.cfg.step_max_tokens, len(tokens))
        for end in range(1, cap + 1):  # the first token that completes the delimiter
            if self.cfg.step_delimiter in self.tokenizer.decode(tokens[:end]):
                return end
        return cap

    def _value(self, conf: np.ndarray, action_len: int) -> float:
        mode = self.cfg.reward_tokens
        if mode == "action" or (mode == "rollout" and action_len == len(conf)):
            part = conf[:action_len]
        elif mode == "rollout":
            part = conf[action_len:]
        else:
            part = conf
        return float(part.mean()) if len(part) else 0.0

    def _reflection_tokens(self, action: list[int]) -> list[int] | None:
        text = self.tokenizer.decode(action)
        if not self.cfg.reflection or THOUGHT_END not in text:
            return None
        before = text[:text.index(THOUGHT_END)].rstrip()
        return self.tokenizer.encode(f"{before}\n\n{REFLECTION}\n\n", add_special_tokens=False)

    def run(self, prompts: Sequence[list[int]], problem_seeds: Sequence[int] | None = None,
            on_iteration: Callable[[int], None] | None = None) -> list[SearchResult]:
        """Search every prompt for ``cfg.iterations`` iterations, all trees per call.

        A row's sampling seed derives from (cfg.seed, its problem's seed, node,
        child), so a problem's search does not depend on which others share it.
        """
        cfg = self.cfg
        problem_seeds = list(range(len(prompts))) if problem_seeds is None else problem_seeds
        trees = [Tree.new(p, cfg.children + cfg.reflection) for p in prompts]
        if cfg.reuse_kv:
            self.pool = KVPool(self.sampler, self._pool_blocks(prompts))
        prompt_lens = [len(p) for p in prompts]
        generated = [0] * len(trees)
        for iteration in range(cfg.iterations):
            contexts, budgets, seeds, owners = [], [], [], []
            leaves = []
            for t, tree in enumerate(trees):
                leaf = select_leaf(tree, cfg.c_uct)
                if tree.terminal_n[leaf]:  # nothing to expand: re-count its own value
                    backup(tree, leaf, float(tree.rollout_value_n[leaf]))
                else:
                    leaves.append((t, leaf))
            fresh = [(t, leaf) for t, leaf in leaves if not trees[t].blocks[leaf]]
            if self.pool is not None and fresh:
                self._cache_leaves(trees, fresh)
            for t, leaf in leaves:
                tree = trees[t]
                room = cfg.max_tokens - (tree.path_length(leaf) - prompt_lens[t])
                contexts += ([tree.path_tokens(leaf)] * cfg.children if self.pool is None
                             else self._paged_rows(tree, leaf, cfg.children))
                for k in range(cfg.children):
                    budgets.append(min(cfg.call_tokens, room))
                    seeds.append(_row_seed(cfg.seed, problem_seeds[t], leaf, k))
                    owners.append((t, leaf))
            if not contexts:
                continue
            for (gen, i), (t, leaf), row in zip(self.generate(contexts, budgets, seeds), owners,
                                                contexts):
                child = self._add_child(trees[t], leaf, gen, i, prompt_lens[t])
                if self.pool is not None:  # keep the blocks the action fills, free the rest
                    keep = -(-len(trees[t].tokens[child]) // self.pool.block)
                    trees[t].blocks[child] = row.action_blocks[:keep]
                    self.pool.free += row.action_blocks[keep:]
                generated[t] += int(gen.lengths[i])
            if on_iteration:
                on_iteration(iteration)
        return [self._result(tree, n) for tree, n in zip(trees, generated)]

    def _add_child(self, tree: Tree, leaf: int, gen: Generation, i: int,
                   prompt_len: int) -> int:
        tokens = gen.row_tokens(i)
        conf = gen.confidences[i, :len(tokens)]
        action_len = self._action_length(tokens)
        ended = gen.finish_reasons[i] in ("eos", "stop")  # EOS or </Output>
        used = tree.path_length(leaf) - prompt_len + action_len
        terminal = (action_len == len(tokens) and ended) or used >= self.cfg.max_tokens
        value = self._value(conf, action_len)
        child = tree.add_child(leaf, tokens[:action_len], bool(terminal))
        tree.rollouts[child] = tokens[action_len:]
        tree.rollout_value_n[child] = value
        backup(tree, child, value)
        reflection = self._reflection_tokens(tokens[:action_len])
        if reflection is not None:
            tree.add_child(leaf, reflection, False, kind="reflection")
        return child

    def _pool_blocks(self, prompts: Sequence[list[int]]) -> int:
        """Blocks for every node the run can create (a power of two, to reuse programs)."""
        cfg, block = self.cfg, BLOCK
        per_child = -(-self._max_action() // block) + cfg.reflection * -(-(self._max_action() + 64) // block)
        need = sum(-(-len(p) // block) for p in prompts) \
            + len(prompts) * cfg.iterations * cfg.children * per_child + 1
        return 1 << (need - 1).bit_length()

    def _result(self, tree: Tree, generated: int) -> SearchResult:
        candidates = []
        for node in range(1, tree.size):
            if tree.kind_n[node] == 1 and not np.isnan(tree.rollout_value_n[node]):
                path = tree.path_tokens(node)[len(tree.tokens[0]):]
                candidates.append(Candidate(node, path + tree.rollouts[node],
                                            float(tree.rollout_value_n[node])))
        path = most_visited_path(tree)
        best = tree.path_tokens(path[-1])[len(tree.tokens[0]):] + tree.rollouts[path[-1]]
        return SearchResult(tree, path, best, candidates, generated)
