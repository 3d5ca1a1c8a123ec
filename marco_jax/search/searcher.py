"""One interface for every tree search, and the layer that runs it on engines.

An :class:`Algorithm` (v1's confidence MCTS in ``mcts.py``, v2's tagged tree in
``tagged.py``) only writes each problem's search as a program (see
``driver.py``): it asks for continuations and receives completions, as mctx
keeps the algorithm apart from its ``recurrent_fn``. A :class:`Searcher` runs an
algorithm's programs over named engines, many trees at once, and keeps the
run's figures (requests, engine statistics), so no algorithm holds engines,
slots or counters.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

from marco_jax.engine.engine import Engine
from marco_jax.errors import MarcoError
from marco_jax.search.driver import (Driver, SearchProgram, default_trees_in_flight, drive,
                                     engine_stats)
from marco_jax.search.results import Problem, SearchResult
from marco_jax.search.rewards import Reward
from marco_jax.search.tree import Tree


class Algorithm(Protocol):
    """A tree search written as one program per problem."""

    models: frozenset[str]  # the engines its calls name ("policy", v2's "checker")
    width: int  # the most continuations one step of a tree asks for
    reward: Reward

    def program(self, problem: Problem,
                on_grow: Callable[[Tree], None] | None = None) -> SearchProgram:
        """The problem's search; returns a :class:`SearchResult`. ``on_grow`` sees
        the tree each time it grows (a server drawing it live)."""


class Searcher:
    """Runs an algorithm over ``engines``, ``max_trees`` trees at a time (by
    default enough calls to fill the policy engine's slots 8 times over)."""

    def __init__(self, algorithm: Algorithm, engines: Mapping[str, Engine],
                 max_trees: int | None = None):
        if missing := sorted(algorithm.models - set(engines)):
            raise MarcoError(f"the search uses model(s) {', '.join(missing)} but only "
                             f"{', '.join(engines)} were given")
        self.algorithm = algorithm
        self.driver = Driver(dict(engines))
        self.max_trees = max_trees or default_trees_in_flight(engines["policy"].config.slots,
                                                              algorithm.width)

    def stream(self, problems: Iterable[Problem], on_start: Callable[[Any], None] | None = None,
               on_grow: Callable[[Any, Tree], None] | None = None,
               ) -> Iterator[tuple[Any, SearchResult]]:
        """Search problems, yielding ``(key, result)`` as each tree finishes (not in
        input order); ``on_grow(key, tree)`` sees each tree as it grows."""
        def programs():
            for problem in problems:
                self.algorithm.reward.check_gold(problem.key, problem.gold)
                grown = None if on_grow is None else functools.partial(on_grow, problem.key)
                yield problem.key, self.algorithm.program(problem, grown)
        return drive(self.driver, programs(), self.max_trees, on_start)

    def run(self, prompts: Sequence[list[int]], problem_seeds: Sequence[int] | None = None,
            golds: Sequence[str | None] | None = None) -> list[SearchResult]:
        """Search every prompt; results in input order."""
        seeds = list(range(len(prompts))) if problem_seeds is None else list(problem_seeds)
        golds = [None] * len(prompts) if golds is None else list(golds)
        out = dict(self.stream(Problem(i, list(p), s, g)
                               for i, (p, s, g) in enumerate(zip(prompts, seeds, golds))))
        return [out[i] for i in range(len(prompts))]

    def stats(self) -> dict:
        """The policy engine's figures so far and the requests the trees made."""
        return engine_stats(self.driver.engines["policy"], self.driver.calls)
