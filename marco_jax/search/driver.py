"""Many search trees multiplexed over the engine's slots.

A tree's algorithm is written as a plain generator, in its own order: it
yields a list of :class:`Call` (continuations it needs, e.g. the children of a
leaf), receives their completions in the same order, and finally returns its
result: a :data:`SearchProgram` (the engine's jitted functions are device
programs; these are the search's). :func:`drive` runs many such programs at once: it submits every
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
    stops: tuple[str, ...] | None = None  # the engine's stop strings that end it (None: all)


SearchProgram = Generator[list[Call], list[Completion], Any]


@dataclasses.dataclass
class _Running:
    key: Any
    program: SearchProgram
    results: list[Completion | None]
    order: int  # start order
    rounds: int = 0  # rounds of calls made so far

    @property
    def priority(self) -> int:
        """Engine priority of its next calls: by round, then by start order."""
        return (self.rounds << 32) + self.order


class Driver:
    """Programs in flight over named engines: ``start`` adds one, ``step`` steps
    every engine once and resumes each program whose calls are all back.

    Calls are admitted breadth-first over programs: a program's k-th round of
    calls goes before any program's (k+1)-th, then the older program first. So
    every tree takes its next step before any takes two, and no tree is left to
    run its last rounds alone at the end of a file (with older-trees-first the
    youngest tree's two 384-token rounds ran nearly alone for 8 minutes).
    Requests submitted to the engines directly (a server's plain completions)
    share the steps; ``step`` hands their completions back."""

    def __init__(self, engines: Mapping[str, Engine]):
        self.engines = engines
        self.finished: list[tuple[Any, Any]] = []  # (key, returned value), in finishing order
        self._active: dict[Any, _Running] = {}
        self._owners: dict[tuple[str, int], tuple[_Running, int]] = {}
        self._started = 0
        self.calls = 0  # continuations the programs asked for, over the driver's life

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def has_work(self) -> bool:
        return any(engine.has_work for engine in self.engines.values())

    def start(self, key: Any, program: SearchProgram) -> None:
        """Run a program up to its first calls (it may finish at once)."""
        if key in self._active:
            raise MarcoError(f"search program {key!r} is already running")
        run = _Running(key, program, [], self._started)
        self._started += 1
        self._active[key] = run
        self._resume(run, None)

    def cancel(self, key: Any) -> bool:
        """Stop a program and drop its calls in flight; False if it is not running."""
        run = self._active.pop(key, None)
        if run is None:
            return False
        for (name, rid), (owner, _) in list(self._owners.items()):
            if owner is run:
                self.engines[name].cancel(rid)
                del self._owners[name, rid]
        run.program.close()
        return True

    def requests(self, key: Any) -> list[tuple[str, int]]:
        """The engine requests a running program is waiting for, in call order."""
        owned = [(index, name, rid) for (name, rid), (owner, index) in self._owners.items()
                 if owner.key == key]
        return [(name, rid) for _, name, rid in sorted(owned)]

    def step(self) -> list[Completion]:
        """Step each engine with work once and resume the programs whose calls are
        all back; returns the completions of requests no program made."""
        foreign = []
        for name, engine in self.engines.items():
            if engine.has_work:
                for completion in engine.step():
                    owner = self._owners.pop((name, completion.request_id), None)
                    if owner is None:
                        foreign.append(completion)
                    else:
                        owner[0].results[owner[1]] = completion
        for run in [r for r in self._active.values() if all(c is not None for c in r.results)]:
            self._resume(run, run.results)
        return foreign

    def _resume(self, run: _Running, completions: list[Completion] | None) -> None:
        try:
            calls = run.program.send(completions)
        except StopIteration as stop:
            del self._active[run.key]
            self.finished.append((run.key, stop.value))
            return
        if not calls:
            raise MarcoError(f"search program {run.key!r} asked for no continuations")
        run.results = [None] * len(calls)
        self.calls += len(calls)
        for index, call in enumerate(calls):
            if call.model not in self.engines:
                raise MarcoError(f"search program {run.key!r} asked for model {call.model!r}; "
                                 f"engines: {', '.join(self.engines)}")
            rid = self.engines[call.model].submit(
                call.prompt, call.max_new_tokens, temperature=call.temperature,
                top_k=call.top_k, top_p=call.top_p, seed=call.seed, priority=run.priority,
                stops=call.stops)
            self._owners[call.model, rid] = (run, index)
        run.rounds += 1


def drive(driver: Driver, programs: Iterable[tuple[Any, SearchProgram]],
          max_in_flight: int, on_start: Callable[[Any], None] | None = None,
          ) -> Iterator[tuple[Any, Any]]:
    """Run ``(key, program)`` pairs on ``driver``, at most ``max_in_flight`` at a
    time, yielding ``(key, returned value)`` as each program finishes (not in
    input order)."""
    source = iter(programs)
    exhausted = False
    while True:
        yield from driver.finished  # before admitting more: a finished tree's slot goes on
        driver.finished.clear()
        while not exhausted and driver.active < max_in_flight:
            item = next(source, None)
            if item is None:
                exhausted = True
                break
            if on_start:
                on_start(item[0])
            driver.start(*item)
        if not driver.active and not driver.finished:
            if exhausted:
                return
            continue
        if driver.step():
            raise MarcoError("an engine returned a completion no search program asked for")


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
