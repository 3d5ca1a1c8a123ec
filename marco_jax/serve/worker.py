"""The server's engine thread: every HTTP request becomes engine work here.

One thread owns the engine and a search :class:`Driver` over it (JAX calls
and the scheduler's bookkeeping never race). Each loop turn it takes new and
cancelled jobs from the request handlers, steps the engine once, and turns
what the step produced into events for each job's handler: text deltas (with
log-probabilities when asked), finish reasons, a search's result, usage. A
plain request's ``n`` choices are engine requests of their own (seeds
``seed + i``); a search request is the search config's tree program, so both
kinds share the decode slots. Handlers receive events through ``emit``, a
thread-safe callback (the app hands them to its event loop).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from marco_jax.engine import stops
from marco_jax.engine.engine import Completion, Engine
from marco_jax.errors import MarcoError
from marco_jax.grading import final_answer
from marco_jax.search import job_files
from marco_jax.search.config import JobConfig
from marco_jax.search.driver import Driver, Program
from marco_jax.search.record import TreeRecord, nodes_of
from marco_jax.search.results import Problem, SearchResult
from marco_jax.search.searcher import make_algorithm
from marco_jax.search.tree import Tree
from marco_jax.serve.protocol import FINISH, GenerationRequest, RequestError, TokenInfo, usage
from marco_jax.serve.text import ChoiceText

log = logging.getLogger("marco_jax.serve")


@dataclasses.dataclass
class Event:
    """What a job's handler receives: ``delta`` (a choice's new text, its tokens'
    log-probabilities, maybe its finish reason), ``progress`` (a search round
    came back), ``search`` (the search's result), ``done`` (usage; the last
    event) or ``error`` (an OpenAI error body and HTTP status; also the last)."""

    kind: str
    index: int = 0
    text: str = ""
    tokens: list[TokenInfo] = dataclasses.field(default_factory=list)
    finish: str | None = None
    data: dict | None = None


@dataclasses.dataclass
class Job:
    """One HTTP request: its parsed body, prompt ids, token budget and sink."""

    request: GenerationRequest
    prompt_ids: list[int]
    max_tokens: int
    seed: int
    emit: Callable[[Event], None]
    search: JobConfig | None = None
    tree_id: str | None = None  # a search's tree, as GET /v1/trees/{id} shows it
    id: int = -1
    submitted: float = dataclasses.field(default_factory=time.perf_counter)
    first_token: float | None = None


@dataclasses.dataclass
class _Choice:
    rid: int
    text: ChoiceText
    seen: int = 0  # engine tokens looked at
    done: bool = False


@dataclasses.dataclass
class ServeMetrics:
    """Counters for ``/metrics``; the worker thread writes, readers copy."""

    requests_started: int = 0
    requests_finished: int = 0
    requests_cancelled: int = 0
    generated_tokens: int = 0
    running: int = 0  # engine requests in decode slots after the last step
    waiting: int = 0  # engine requests queued for a slot
    ttft_sum: float = 0.0
    ttft_count: int = 0
    recent: collections.deque = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=512))  # (time, tokens) per step

    def tokens_per_s(self, window: float = 10.0) -> float:
        now = time.perf_counter()
        inside = [(t, n) for t, n in list(self.recent) if now - t <= window]
        return sum(n for _, n in inside) / window if inside else 0.0


def decoding_once(decode: Callable[[list[int]], str]) -> Callable[[Sequence[int]], str]:
    """``decode`` remembered per token sequence. A search's tree is snapshotted
    after every growth step; its nodes' texts never change once written, so
    each is decoded once rather than once per snapshot (quadratic in the tree)."""
    texts: dict[tuple[int, ...], str] = {}

    def decode_once(tokens: Sequence[int]) -> str:
        key = tuple(int(t) for t in tokens)
        if key not in texts:
            texts[key] = decode(list(key))
        return texts[key]

    return decode_once


def _with_stops(program: Program, strings: tuple[str, ...],
                on_round: Callable[[list[Completion]], None]) -> Program:
    """A search program whose calls end on its config's stop strings only (the
    engine's table also holds other configs'), reporting each round's return."""
    completions = None
    try:
        while True:
            try:
                calls = program.send(completions)
            except StopIteration as stop:
                return stop.value
            completions = yield [dataclasses.replace(c, stops=strings) for c in calls]
            on_round(completions)
    finally:
        program.close()


ADMIT_WAIT_S = 0.02  # see EngineWorker: a few client round trips on loopback
GATHER_LIMIT = 25  # the longest gather, in admit_wait_s windows


class EngineWorker:
    """Runs jobs on one engine in a thread of its own (see the module doc)."""

    def __init__(self, engine: Engine, tokenizer: Any, eos_ids: Sequence[int],
                 max_jobs: int = 256, admit_wait_s: float = ADMIT_WAIT_S):
        """``admit_wait_s``: when a request finds the engine idle, the quiet gap
        that ends the wait for others before the first step. Clients that send
        their next request as one finishes arrive a few milliseconds apart;
        without the wait the first would start a decode call alone and the rest
        would idle through it (a whole call: seconds on a CPU)."""
        self.engine, self.tokenizer = engine, tokenizer
        self.admit_wait_s = admit_wait_s
        self.driver = Driver({"policy": engine})
        self.token_bytes = stops.token_bytes(tokenizer, engine.cfg.vocab_size)
        self.eos = frozenset(int(t) for t in eos_ids)
        self.max_jobs = max_jobs
        self.metrics = ServeMetrics()
        self._cond = threading.Condition()
        self._inbox: list[Job] = []
        self._cancels: list[int] = []
        self._jobs: dict[int, Job] = {}
        self._choices: dict[int, list[_Choice]] = {}
        self._searching: dict[int, tuple[Job, Problem]] = {}
        self._ids = itertools.count()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="marco-engine", daemon=True)

    # ---- called from request handlers -----------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._jobs) + len(self._inbox)

    def submit(self, job: Job) -> int:
        """Queue a job; 503 when the server is closing or ``max_jobs`` are in flight."""
        with self._cond:
            if self._closing:
                raise RequestError("the server is shutting down", status=503,
                                   kind="server_error")
            if len(self._jobs) + len(self._inbox) >= self.max_jobs:
                raise RequestError(f"the server has {self.max_jobs} requests in flight; "
                                   "retry later", status=503, kind="server_error")
            job.id = next(self._ids)
            self._inbox.append(job)
            self._cond.notify()
            return job.id

    def cancel(self, job_id: int) -> None:
        """Drop a job (its client went away): its slots and blocks free at once."""
        with self._cond:
            self._cancels.append(job_id)
            self._cond.notify()

    def close(self, grace_s: float = 30.0) -> None:
        """Refuse new jobs, let those in flight finish for up to ``grace_s``, then
        end the rest with a 503 error and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        deadline = time.perf_counter() + grace_s
        while self.in_flight and time.perf_counter() < deadline and self.alive:
            time.sleep(0.05)
        with self._cond:
            self._cancels += list(self._jobs) + [job.id for job in self._inbox]
            self._inbox.clear()
            self._cond.notify()
        self._thread.join(timeout=grace_s + 10)

    # ---- the engine thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                idle = not self.driver.has_work
                while not (self._inbox or self._cancels or self.driver.has_work
                           or (self._closing and not self._jobs)):
                    self._cond.wait()
                if idle and self._inbox and not self._closing:
                    self._gather()
                if self._closing and not (self._jobs or self._inbox or self._cancels):
                    return
                new, self._inbox = self._inbox, []
                cancels, self._cancels = self._cancels, []
            for job_id in cancels:
                self._drop(job_id)
            for job in new:
                self._begin(job)
            if self.driver.has_work:
                try:
                    self._step()
                except Exception as error:  # an engine failure ends every job, not the thread
                    log.exception("engine step failed")
                    for job_id in list(self._jobs):
                        self._fail(job_id, RequestError(f"engine failure: {error}", status=500,
                                                        kind="server_error"))

    def _gather(self) -> None:
        """Let requests join the first step while they keep arriving less than
        ``admit_wait_s`` apart, until the engine's slots are spoken for or
        ``GATHER_LIMIT`` windows have passed (called holding the lock, which
        ``wait`` releases)."""
        limit = time.perf_counter() + GATHER_LIMIT * self.admit_wait_s
        slots = self.engine.config.slots
        while not self._closing and sum(job.request.n for job in self._inbox) < slots:
            arrived = len(self._inbox)
            quiet = min(time.perf_counter() + self.admit_wait_s, limit)
            while (left := quiet - time.perf_counter()) > 0 and len(self._inbox) == arrived:
                self._cond.wait(timeout=left)
            if len(self._inbox) == arrived or time.perf_counter() >= limit:
                return

    def _begin(self, job: Job) -> None:
        self._jobs[job.id] = job
        self.metrics.requests_started += 1
        request = job.request
        try:
            if job.search is not None:
                self._begin_search(job)
                return
            self._choices[job.id] = []
            for i in range(request.n):
                rid = self.engine.submit(job.prompt_ids, job.max_tokens,
                                         temperature=request.temperature,
                                         top_k=max(request.top_k, 0), top_p=request.top_p,
                                         seed=(job.seed + i) % 2 ** 31, stops=())
                self._choices[job.id].append(
                    _Choice(rid, ChoiceText(self.token_bytes, request.stop, self.eos)))
        except MarcoError as error:
            self._fail(job.id, RequestError(str(error)))

    def _begin_search(self, job: Job) -> None:
        config = job.search
        algorithm = make_algorithm(config, self.tokenizer, self.engine.config.max_model_len)
        problem = Problem(job.id, job.prompt_ids, job.seed)
        steps = itertools.count(1)
        generated = [0]

        def on_round(completions: list[Completion]) -> None:
            generated[0] += sum(len(c.tokens) for c in completions)
            if job.first_token is None:
                self._first_token(job)

        decode_once = decoding_once(self._decode)

        def on_grow(tree: Tree) -> None:
            job.emit(Event("progress", data={"step": next(steps), "generated_tokens": generated[0],
                                              "nodes": nodes_of(tree, decode_once)}))

        self._searching[job.id] = (job, problem)
        self.driver.start(job.id, _with_stops(algorithm.program(problem, on_grow), config.stops,
                                              on_round))
        self._collect_searches()

    def _step(self) -> None:
        before = self.engine.stats.kept_tokens
        foreign = {c.request_id: c for c in self.driver.step()}
        produced = self.engine.stats.kept_tokens - before
        self.metrics.generated_tokens += produced
        self.metrics.recent.append((time.perf_counter(), produced))
        scheduler = self.engine.scheduler
        self.metrics.running = sum(r is not None for r in scheduler.running)
        self.metrics.waiting = len(scheduler.waiting)
        for job_id in list(self._choices):
            self._advance(job_id, foreign)
        self._collect_searches()

    def _advance(self, job_id: int, finished: Mapping[int, Completion]) -> None:
        """Feed each choice's new tokens, end choices that finished or hit a stop
        string, and emit what changed."""
        job = self._jobs[job_id]
        for index, choice in enumerate(self._choices[job_id]):
            if choice.done:
                continue
            done = finished.get(choice.rid)
            source = done if done is not None else self.engine.in_flight(choice.rid)
            if source is None:
                continue
            new = list(source.tokens[choice.seen:])
            start = choice.seen
            choice.seen += len(new)
            taken = choice.text.feed(new)
            finish = None
            if choice.text.stopped:
                finish = "stop"
                if done is None:
                    self.engine.cancel(choice.rid)
            elif done is not None:
                finish = FINISH[done.finish_reason]
            tokens = (self._token_infos(source, start, start + taken)
                      if job.request.logprobs is not None else [])
            text = choice.text.release(final=finish is not None)
            if (text or tokens) and job.first_token is None:
                self._first_token(job)
            if text or tokens or finish:
                job.emit(Event("delta", index, text, tokens, finish))
            if finish is not None:
                choice.done = True
        if all(c.done for c in self._choices[job_id]):
            tokens = sum(c.text.tokens for c in self._choices.pop(job_id))
            self._finish(job_id, Event("done", data={"usage": usage(len(job.prompt_ids),
                                                                    tokens)}))

    def _token_infos(self, source: Any, start: int, end: int) -> list[TokenInfo]:
        top_ids, top_lps = source.top_ids, source.top_logprobs
        out = []
        for j in range(start, end):
            token = int(source.tokens[j])
            top = [(self._text(int(t)), self.token_bytes[int(t)], float(lp))
                   for t, lp in zip(top_ids[j], top_lps[j])]
            out.append(TokenInfo(self._text(token), self.token_bytes[token],
                                 float(source.logprobs[j]), top))
        return out

    def _text(self, token: int) -> str:
        return self.token_bytes[token].decode("utf-8", errors="replace")

    def _collect_searches(self) -> None:
        for job_id, result in self.driver.finished:
            job, problem = self._searching.pop(job_id)
            job.emit(Event("search", data=self._search_result(job, problem, result)))
            self._finish(job_id, Event("done", data={"usage": usage(
                len(job.prompt_ids), result.generated_tokens)}))
        self.driver.finished.clear()

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode([t for t in tokens if t not in self.eos])

    def _search_result(self, job: Job, problem: Problem, result: SearchResult) -> dict:
        decode = self._decode
        text, value = job_files.choose(result, job.search.final, decode)
        return {"text": text, "answer": final_answer(text), "value": value,
                "config": job.search.name, "rollouts": result.rollouts,
                "generated_tokens": result.generated_tokens,
                "candidates": [{"node": c.node, "text": shown, "value": c.value,
                                "finished": c.finished, "answer": final_answer(shown)}
                               for c, shown in ((c, decode(c.tokens)) for c in result.candidates)],
                "tree": TreeRecord.of(result.tree, decode, job.tree_id, job.request.question,
                                      None, final_answer(text), result.best_path)}

    def _first_token(self, job: Job) -> None:
        job.first_token = time.perf_counter()
        self.metrics.ttft_sum += job.first_token - job.submitted
        self.metrics.ttft_count += 1

    def _drop(self, job_id: int) -> None:
        if job_id in self._jobs:
            self.metrics.requests_cancelled += 1
            status = 503 if self._closing else 499  # 499: the client closed the request
            self._fail(job_id, RequestError("the request was cancelled", status=status,
                                            kind="cancelled"))

    def _fail(self, job_id: int, error: RequestError) -> None:
        for choice in self._choices.pop(job_id, []):
            if not choice.done:
                self.engine.cancel(choice.rid)
        if self._searching.pop(job_id, None) is not None:
            self.driver.cancel(job_id)
        self._finish(job_id, Event("error", data={"status": error.status, **error.body()}))

    def _finish(self, job_id: int, event: Event) -> None:
        job = self._jobs.pop(job_id)
        self.metrics.requests_finished += 1
        job.emit(event)


def engine_stop_strings(configs: Iterable[JobConfig]) -> tuple[str, ...]:
    """The engine's stop table: every offered search config's strings."""
    return tuple(dict.fromkeys(s for config in configs for s in config.stops))
