"""Many search trees multiplexed over the engine's slots.

A tree's algorithm is written as a plain generator, in its own order: it
yields a list of :class:`Call` (continuations it needs, e.g. the children of a
leaf), receives their completions in the same order, and finally returns its
result. :func:`drive` runs many such programs at once: it submits every
program's calls, steps the engines, and resumes a program as soon as all of its
own calls are back, whatever the others are doing; when a program returns, the
next one starts. So the search algorithms (v1's confidence MCTS, v2's tagged
tree) never see slots, blocks or other trees, and the device stays full.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Generator, Iterable, Iterator, Mapping

import numpy as np

from marco_jax.engine.engine import Completion, Engine
from marco_jax.errors import MarcoError


def default_trees_in_flight(slots: int, calls_per_step: int) -> int:
    """Trees searched at once: enough that their calls fill the slots 8 times
    over. A tree waits for its own calls between steps, so fewer leave slots
    idle at the end of a file (the last trees running alone, one sequential
    step after another); waiting calls hold no KV blocks. With breadth-first
    admission (``drive``) the trees in flight finish close together, so a
    killed job loses up to this many trees of work."""
    return math.ceil(8 * slots / calls_per_step)


def row_seed(*parts: int) -> int:
    """A call's sampling seed from (config seed, problem seed, node, child, ...)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] & 0x7FFFFFFF)


@dataclasses.dataclass(frozen=True)
class Call:
    """One continuation a tree asks for; ``model`` names the engine that serves it."""

    prompt: list[int]
    max_new_tokens: int
    seed: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    model: str = "policy"


Program = Generator[list[Call], list[Completion], Any]


@dataclasses.dataclass
class _Running:
    key: Any
    program: Program
    results: list[Completion | None]
    order: int  # start order
    rounds: int = 0  # rounds of calls made so far

    @property
    def priority(self) -> int:
        """Engine priority of its next calls: by round, then by start order."""
        return (self.rounds << 32) + self.order


def drive(engines: Mapping[str, Engine], programs: Iterable[tuple[Any, Program]],
          max_in_flight: int, on_start: Callable[[Any], None] | None = None,
          ) -> Iterator[tuple[Any, Any]]:
    """Run ``(key, program)`` pairs, at most ``max_in_flight`` at a time, yielding
    ``(key, returned value)`` as each program finishes (not in input order).

    Calls are admitted breadth-first over programs: a program's k-th round of
    calls goes before any program's (k+1)-th, then the older program first. So
    every tree takes its next step before any takes two, and no tree is left to
    run its last rounds alone at the end of a file (with older-trees-first the
    youngest tree's two 384-token rounds ran nearly alone for 8 minutes)."""
    source = iter(programs)
    active: list[_Running] = []
    owners: dict[tuple[str, int], tuple[_Running, int]] = {}
    finished: list[tuple[Any, Any]] = []

    def resume(run: _Running, completions: list[Completion] | None) -> None:
        try:
            calls = run.program.send(completions)
        except StopIteration as stop:
            active.remove(run)
            finished.append((run.key, stop.value))
            return
        if not calls:
            raise MarcoError(f"search program {run.key!r} asked for no continuations")
        run.results = [None] * len(calls)
        for index, call in enumerate(calls):
            if call.model not in engines:
                raise MarcoError(f"search program {run.key!r} asked for model {call.model!r}; "
                                 f"engines: {', '.join(engines)}")
            rid = engines[call.model].submit(call.prompt, call.max_new_tokens,
                                             temperature=call.temperature, top_k=call.top_k,
                                             top_p=call.top_p, seed=call.seed,
                                             priority=run.priority)
            owners[call.model, rid] = (run, index)
        run.rounds += 1

    exhausted, started = False, 0
    while True:
        yield from finished  # before admitting more: a finished tree's slot goes to the next
        finished.clear()
        while not exhausted and len(active) < max_in_flight:
            item = next(source, None)
            if item is None:
                exhausted = True
                break
            run = _Running(item[0], item[1], [], started)
            started += 1
            if on_start:
                on_start(run.key)
            active.append(run)
            resume(run, None)
        if not active and not finished:
            if exhausted:
                return
            continue
        for name, engine in engines.items():
            if engine.has_work:
                for completion in engine.step():
                    run, index = owners.pop((name, completion.request_id))
                    run.results[index] = completion
        for run in [r for r in active if all(c is not None for c in r.results)]:
            resume(run, run.results)


def engine_stats(engine: Engine, requests: int) -> dict:
    """An engine's figures so far: slot utilisation, prefilled and cached context
    tokens per generated token, compile/prefill/decode seconds."""
    stats = engine.stats
    generated = max(stats.kept_tokens, 1)
    return {"slot_utilisation": round(stats.utilisation, 4),
            "generated_tokens": stats.kept_tokens, "requests": requests,
            "prefilled_per_generated": round(stats.prefilled_tokens / generated, 4),
            "cached_per_generated": round(stats.cached_tokens / generated, 4),
            "decode_calls": stats.decode_calls, "prefill_calls": stats.prefill_calls,
            "compile_s": round(stats.compile_s, 2), "prefill_s": round(stats.prefill_s, 2),
            "decode_s": round(stats.decode_s, 2), "programs": engine.num_programs}


def stats_line(stats: dict) -> str:
    return (f"slot utilisation {stats['slot_utilisation']:.2f}, {stats['generated_tokens']} "
            f"tokens generated, {stats['prefilled_per_generated']:.2f} prefilled per generated, "
            f"{stats['decode_calls']} decode calls")
