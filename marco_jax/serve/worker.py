"""The server's engine thread: it alone drives the engine, so JAX calls and the scheduler's
bookkeeping never race. A plain request's ``n`` choices are engine requests (seeds ``seed + i``)
and a search request is a tree program, so both kinds share the decode slots. Choices reach
the engine round-robin by request, only as many as it can admit next and never all the
slots, so one request's many choices never queue ahead of a later request."""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import logging
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from marco_jax.engine import stops
from marco_jax.engine.engine import Completion, Engine
from marco_jax.errors import MarcoError
from marco_jax.grading import final_answer
from marco_jax.search import job_files
from marco_jax.search.config import JobConfig
from marco_jax.search.driver import Driver, SearchProgram
from marco_jax.search.record import (NODE_STATS, NodeRecord, TreeRecord, mean_value, node_record,
                                     token_records)
from marco_jax.search.results import Problem, SearchResult
from marco_jax.search.runner import make_algorithm
from marco_jax.search.tree import ActionScores, Tree
from marco_jax.serve.protocol import FINISH, GenerationRequest, RequestError, TokenInfo, usage
from marco_jax.serve.text import ChoiceText

log = logging.getLogger("marco_jax.serve")

# One request's choices hold at most all but 1/RESERVED_SHARE of the slots (one at
# least is left), so a request arriving while another's n choices run finds a slot at
# once instead of waiting for them to finish (the engine does not preempt).
RESERVED_SHARE = 8
ADMIT_WAIT_S = 0.02  # see EngineWorker: a few client round trips on loopback
GATHER_LIMIT = 25  # the longest gather, in admit_wait_s windows
KEPT_TREES = 64  # search trees kept for GET /v1/trees/{id}


@dataclasses.dataclass
class Event:
    """What a request's handler receives: ``delta`` (a choice's new text and tokens, maybe its
    finish), ``progress`` (a search round), ``search`` (its result), then ``done`` or ``error``."""

    kind: str
    index: int = 0
    text: str = ""
    tokens: list[TokenInfo] = dataclasses.field(default_factory=list)
    finish: str | None = None
    data: dict | None = None
    error: RequestError | None = None


@dataclasses.dataclass
class ServeRequest:
    """One HTTP request on the engine thread; ``emit`` is thread-safe."""

    parsed: GenerationRequest
    prompt_ids: list[int]
    max_tokens: int
    seed: int
    emit: Callable[[Event], None]
    search_job: JobConfig | None = None  # a search request's config
    search_budget: int | None = None  # a search's cap on all tokens it generates (None: none)
    tree_id: str | None = None  # a search's, set when it begins
    id: int = -1
    submitted: float = dataclasses.field(default_factory=time.perf_counter)
    first_token: float | None = None


@dataclasses.dataclass
class ServeMetrics:
    """Counters for ``/metrics``; the worker thread writes, readers copy."""

    requests_started: int = 0
    requests_finished: int = 0
    requests_cancelled: int = 0
    generated_tokens: int = 0
    running: int = 0  # engine requests in decode slots
    waiting: int = 0  # engine requests queued for a slot, and choices waiting their turn
    ttft_sum: float = 0.0
    ttft_count: int = 0
    recent: collections.deque = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=512))  # (time, tokens) per step

    def tokens_per_s(self, window: float = 10.0) -> float:
        now = time.perf_counter()
        return sum(n for t, n in list(self.recent) if now - t <= window) / window


def decoding_once(decode: Callable[[list[int]], str]) -> Callable[[Sequence[int]], str]:
    """``decode`` remembered per token sequence: a search's answer texts (the chosen one,
    the candidates) are decoded once each."""
    cached = functools.cache(lambda key: decode(list(key)))
    return lambda tokens: cached(tuple(int(t) for t in tokens))


class LiveTree:
    """A search's tree for ``GET /v1/trees/{id}``, growing, then final. At each growth step
    the engine thread records only host data (:meth:`grow`: the new nodes' token ids, and
    copies of the statistics arrays), never text; a reader's thread builds the record
    (:meth:`record`), decoding each node's texts once, the first time anyone asks. So a
    search nobody watches decodes no node, and one watched decodes each node once."""

    def __init__(self, tree_id: str, question: str | None,
                 decode: Callable[[Sequence[int]], str], token_text: Callable[[int], str]):
        self.id, self.question, self._decode = tree_id, question, decode
        self._token_text = token_text
        self._lock = threading.Lock()  # what the engine thread writes
        self._texts_lock = threading.Lock()  # one reader decodes a node, the others wait
        self._tokens: list[tuple[list[int], list[int]]] = []  # per node: action, rollout
        self._action_scores: list[ActionScores | None] = []  # per node: the model's, of its action
        self._stats: dict[str, np.ndarray] = {}
        self._kinds: tuple[str, ...] = ()
        self._texts: list[tuple[str, str]] = []  # decoded, per node (a prefix of the nodes)
        self.chosen_answer: str | None = None
        self.best_path: tuple[int, ...] = ()
        self.final = False

    @property
    def size(self) -> int:
        return len(self._tokens)

    def grow(self, tree: Tree) -> int:
        """Record the tree's new nodes and everyone's statistics (engine thread); its size.
        A node's token lists never change once added, so they are kept, not copied."""
        # copied at each step: old nodes' statistics change (backups, ends)
        stats = {name: getattr(tree, name)[:tree.size].copy() for name in NODE_STATS}
        with self._lock:
            self._action_scores += tree.action_scores[len(self._tokens):tree.size]
            self._tokens += [(tree.tokens[n], tree.rollouts[n])
                             for n in range(len(self._tokens), tree.size)]
            self._stats, self._kinds = stats, tree.kinds
        return tree.size

    def finish(self, tree: Tree, chosen_answer: str | None, best_path: Sequence[int]) -> None:
        """The search's last state and what it chose (engine thread)."""
        self.grow(tree)
        with self._lock:
            self.chosen_answer, self.best_path = chosen_answer, tuple(best_path)
            self.final = True

    def record(self, since: int = 0) -> TreeRecord:
        """The tree now, its nodes from id ``since`` on (a reader's thread: this decodes)."""
        return self._record(since)[0]

    def growth(self, since: int) -> tuple[TreeRecord, list[int], list[float | None]]:
        """The nodes from id ``since`` on, and every node's visits and mean value now (backups
        change the old nodes' too), from one snapshot: what a page drawing the growing tree
        needs, its old nodes' texts not sent again."""
        record, stats = self._record(since)  # statistics of every node recorded so far
        visits = [int(n) for n in stats.get("visits_n", ())]
        values = [mean_value(v, n) for v, n in zip(stats.get("value_sum_n", ()), visits)]
        return record, visits, values

    def _record(self, since: int) -> tuple[TreeRecord, dict[str, np.ndarray]]:
        with self._lock:
            tokens, stats, kinds = list(self._tokens), self._stats, self._kinds
            chosen, best = self.chosen_answer, self.best_path
        texts = self._texts_upto(tokens)
        nodes = [node_record(stats, kinds, n, *texts[n]) for n in range(max(since, 0), len(tokens))]
        return TreeRecord(self.id, tuple(nodes), self.question, None, chosen, best), stats

    def node(self, n: int) -> NodeRecord | None:
        """Node ``n`` with its tokens' scores (the page's token table; a reader's thread);
        None if the tree has no such node yet."""
        with self._lock:
            if not 0 <= n < len(self._tokens):
                return None
            action, scores = self._tokens[n][0], self._action_scores[n]
        tokens = None if scores is None else token_records(scores, action, self._token_text)
        return dataclasses.replace(self.record(n).nodes[0], tokens=tokens)

    def _texts_upto(self, tokens: list[tuple[list[int], list[int]]]) -> list[tuple[str, str]]:
        """Every node's (text, rollout text), decoding only the nodes not decoded before."""
        with self._texts_lock:
            self._texts += [(self._decode(action), self._decode(rollout) if rollout else "")
                            for action, rollout in tokens[len(self._texts):]]
            return self._texts[:len(tokens)]


def _with_stops(program: SearchProgram, strings: tuple[str, ...],
                on_round: Callable[[list[Completion]], None],
                budget: int | None = None) -> SearchProgram:
    """A search program ending on its config's stop strings only, not all the engine's; with
    a ``budget``, each round's calls share the generated tokens it has left (one at least)."""
    completions, left = None, budget
    try:
        while True:
            try:
                calls = program.send(completions)
            except StopIteration as stop:
                return stop.value
            share = None if left is None else max(1, left // len(calls))
            completions = yield [dataclasses.replace(
                c, stops=strings, max_new_tokens=min(c.max_new_tokens, share or c.max_new_tokens))
                for c in calls]
            on_round(completions)
            if left is not None:
                left -= sum(len(c.tokens) for c in completions)
    finally:
        program.close()


@dataclasses.dataclass
class _Choice:
    """One choice of a plain request: its text, and its engine request once submitted."""

    text: ChoiceText
    engine_id: int | None = None  # None: waiting its turn in the worker


class EngineWorker:
    """Runs requests on one engine in a thread of its own (see the module doc)."""

    def __init__(self, engine: Engine, tokenizer: Any, eos_ids: Sequence[int],
                 max_requests: int = 256, admit_wait_s: float = ADMIT_WAIT_S):
        """``admit_wait_s``: the quiet gap that ends an idle engine's wait for more requests
        (clients arrive milliseconds apart, and a late one idles through a decode call)."""
        self.engine, self.tokenizer, self.admit_wait_s = engine, tokenizer, admit_wait_s
        self.driver = Driver({"policy": engine})
        self.token_bytes = stops.token_bytes(tokenizer, engine.cfg.vocab_size)
        self.eos = frozenset(int(t) for t in eos_ids)
        # counted but never shown: EOS and the tokenizer's special tokens (<|endoftext|>, ...)
        self.hidden = self.eos | frozenset(getattr(tokenizer, "all_special_ids", ()))
        self.max_requests = max_requests
        self.metrics = ServeMetrics()
        self._cond = threading.Condition()
        self._inbox: list[ServeRequest] = []
        self._cancels: list[int] = []
        self._requests: dict[int, ServeRequest] = {}  # begun, not finished
        self._choices: dict[int, list[_Choice]] = {}  # a plain request's choices
        # choices not yet submitted, by request, in turn order: request id -> choice indices
        self._turns: collections.OrderedDict[int, collections.deque[int]] = (
            collections.OrderedDict())
        self._trees: collections.OrderedDict[str, LiveTree] = collections.OrderedDict()
        self._trees_lock = threading.Lock()  # the app's handlers read what this thread writes
        self._ids, self._tree_ids = itertools.count(), itertools.count()
        self._closing = False
        self._give_up = False  # the grace period is over: cancel everything (503)
        self._thread = threading.Thread(target=self._run, name="marco-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._requests) + len(self._inbox)

    def submit(self, req: ServeRequest) -> int:
        """Queue a request; 503 when the server is closing or ``max_requests`` are in flight."""
        with self._cond:  # reentrant: in_flight takes it again
            if self._closing or self.in_flight >= self.max_requests:
                raise RequestError("the server is shutting down" if self._closing else
                                   f"the server has {self.max_requests} requests in flight; "
                                   "retry later", status=503, kind="server_error")
            req.id = next(self._ids)
            self._inbox.append(req)
            self._cond.notify()
            return req.id

    def cancel(self, request_id: int) -> None:
        """Drop a request (its client went away): its slots and blocks free at once."""
        with self._cond:
            self._cancels.append(request_id)
            self._cond.notify()

    def tree(self, tree_id: str, since: int = 0) -> TreeRecord | None:
        """A kept search tree as it is now, its nodes from id ``since`` on. The app's threads
        call this while the engine thread grows the tree; node texts are decoded here, in
        the caller's thread, each once (see :class:`LiveTree`)."""
        live = self.live_tree(tree_id)
        return None if live is None else live.record(since)

    def live_tree(self, tree_id: str) -> LiveTree | None:
        with self._trees_lock:
            return self._trees.get(tree_id)

    def close(self, grace_s: float = 30.0) -> None:
        """Refuse new requests and stop, giving those in flight ``grace_s`` before a 503
        (queued ones too: the engine thread begins them and cancels everything)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        deadline = time.perf_counter() + grace_s
        while self.in_flight and time.perf_counter() < deadline and self.alive:
            time.sleep(0.05)
        with self._cond:
            self._give_up = True
            self._cond.notify()
        self._thread.join(timeout=grace_s + 10)

    def _run(self) -> None:
        while True:
            with self._cond:
                idle = not self.driver.has_work
                self._cond.wait_for(lambda: self._inbox or self._cancels or self.driver.has_work
                                    or self._turns  # choices held back by their share
                                    or self._closing and (self._give_up or not self._requests))
                if idle and self._inbox and not self._closing:
                    self._gather()
                if self._closing and not (self._requests or self._inbox or self._cancels):
                    return
                new, self._inbox = self._inbox, []
                cancels, self._cancels = self._cancels, []
            for req in new:  # before the cancels: a client may leave before its request begins
                self._begin(req)
            for request_id in list(self._requests) if self._give_up else cancels:
                self._drop(request_id)
            self._feed()
            if self.driver.has_work:
                try:
                    self._step()
                except Exception as error:  # an engine failure ends every request, not the thread
                    log.exception("engine step failed")
                    for request_id in list(self._requests):
                        self._fail(request_id, RequestError(f"engine failure: {error}",
                                                            status=500, kind="server_error"))
            self._update_gauges()

    def _update_gauges(self) -> None:
        """Running and waiting counts now, so a cancel that idles the engine shows at once."""
        scheduler = self.engine.scheduler
        self.metrics.running = sum(r is not None for r in scheduler.running)
        self.metrics.waiting = len(scheduler.waiting) + sum(map(len, self._turns.values()))

    def _gather(self) -> None:
        """Let requests join the first step while they arrive less than ``admit_wait_s`` apart
        (up to ``GATHER_LIMIT`` windows, or full slots); called holding the lock."""
        limit = time.perf_counter() + GATHER_LIMIT * self.admit_wait_s
        slots = self.engine.config.slots
        while not self._closing and sum(req.parsed.n for req in self._inbox) < slots:
            arrived = len(self._inbox)
            quiet = min(self.admit_wait_s, limit - time.perf_counter())
            if not self._cond.wait_for(lambda: len(self._inbox) > arrived, quiet) \
                    or time.perf_counter() >= limit:
                return

    def _begin(self, req: ServeRequest) -> None:
        """Start a search, or queue a plain request's choices for their turns (see _feed)."""
        self._requests[req.id] = req
        self.metrics.requests_started += 1
        if req.search_job is None:
            n = req.parsed.n
            self._choices[req.id] = [_Choice(self.choice_text(req.parsed.stop)) for _ in range(n)]
            self._turns[req.id] = collections.deque(range(n))
            return
        try:
            self._begin_search(req)
        except MarcoError as error:
            self._fail(req.id, RequestError(str(error)))

    def choice_text(self, stop: Sequence[str] = ()) -> ChoiceText:
        """A new choice's text: stopped by ``stop``, special tokens hidden."""
        return ChoiceText(self.token_bytes, stop, self.hidden)

    def _feed(self) -> None:
        """Submit waiting choices, one request's turn at a time, while the engine has free
        slots to admit them: so a request's ``n`` choices make others wait one turn each,
        not until all of them have run."""
        scheduler = self.engine.scheduler
        room = sum(r is None for r in scheduler.running) - len(scheduler.waiting)
        share = self.engine.config.slots - max(1, self.engine.config.slots // RESERVED_SHARE)
        blocked = 0  # requests in turn order found holding their share, in a row
        while room > 0 and blocked < len(self._turns):
            request_id, indices = next(iter(self._turns.items()))
            self._turns.move_to_end(request_id)
            if self._in_engine(request_id) >= share:
                blocked += 1
                continue
            blocked = 0
            index = indices.popleft()
            if not indices:
                del self._turns[request_id]
            room -= self._submit_choice(self._requests[request_id], index)

    def _in_engine(self, request_id: int) -> int:
        """A plain request's choices in the engine: submitted, not finished."""
        return sum(c.engine_id is not None and not c.text.over
                   for c in self._choices[request_id])

    def _submit_choice(self, req: ServeRequest, index: int) -> bool:
        """Choice ``index`` of a plain request into the engine (seed ``seed + index``);
        False when the engine refuses it, which fails the request."""
        parsed = req.parsed
        try:
            self._choices[req.id][index].engine_id = self.engine.submit(
                req.prompt_ids, req.max_tokens, temperature=parsed.temperature,
                top_k=max(parsed.top_k, 0), top_p=parsed.top_p,
                seed=(req.seed + index) % 2 ** 31, stops=())
        except MarcoError as error:
            self._fail(req.id, RequestError(str(error)))
            return False
        return True

    def _begin_search(self, req: ServeRequest) -> None:
        req.tree_id = f"tree-{next(self._tree_ids)}"
        algorithm = make_algorithm(req.search_job, self.tokenizer, self.engine.config.max_model_len)
        steps = itertools.count(1)
        generated = 0
        live = LiveTree(req.tree_id, req.parsed.question, self.decode, self.token_text)
        self._keep_tree(live)

        def on_round(completions: list[Completion]) -> None:
            nonlocal generated
            generated += sum(len(c.tokens) for c in completions)
            self._first_token(req)

        def on_grow(tree: Tree) -> None:  # host data only: texts are decoded when asked for
            nodes = live.grow(tree)
            req.emit(Event("progress", data={"step": next(steps), "generated_tokens": generated,
                                              "nodes": nodes, "tree_id": req.tree_id}))

        program = algorithm.program(Problem(req.id, req.prompt_ids, req.seed), on_grow)
        self.driver.start(req.id, _with_stops(program, req.search_job.stops, on_round,
                                              req.search_budget))
        self._collect_searches()

    def _step(self) -> None:
        before = self.engine.stats.kept_tokens
        foreign = {c.request_id: c for c in self.driver.step()}
        produced = self.engine.stats.kept_tokens - before
        self.metrics.generated_tokens += produced
        self.metrics.recent.append((time.perf_counter(), produced))
        for request_id in list(self._choices):
            self._advance(self._requests[request_id], foreign)
        self._collect_searches()

    def _advance(self, req: ServeRequest, finished: Mapping[int, Completion]) -> None:
        """Emit each running choice's news; finish the request once all choices are done."""
        choices = self._choices[req.id]
        for index, choice in enumerate(choices):
            if choice.engine_id is not None and not choice.text.over:
                self._advance_choice(req, index, choice.engine_id, choice.text,
                                     finished.get(choice.engine_id))
        if all(choice.text.over for choice in choices):
            del self._choices[req.id]
            self._done(req, sum(choice.text.tokens for choice in choices))

    def _advance_choice(self, req: ServeRequest, index: int, engine_id: int, choice: ChoiceText,
                        done: Completion | None) -> None:
        """Feed a choice's new tokens and emit what changed; it ends at a stop string or EOS."""
        source = done if done is not None else self.engine.in_flight(engine_id)
        if source is None:
            return
        start = choice.tokens  # all it was fed: it takes every token until a stop string
        taken = choice.feed(list(source.tokens[start:]))
        if choice.stopped and done is None:
            self.engine.cancel(engine_id)  # it would run on past the stop string
        finish = "stop" if choice.stopped else (
            None if done is None else FINISH[done.finish_reason])
        tokens = (self._token_infos(source, start, start + taken)
                  if req.parsed.logprobs is not None else [])
        text = choice.release(final=finish is not None)
        if text or tokens:
            self._first_token(req)
        if text or tokens or finish:
            req.emit(Event("delta", index, text, tokens, finish))

    def _token_infos(self, source: Any, start: int, end: int) -> list[TokenInfo]:
        return [TokenInfo(*self._shown(source.tokens[j]), float(source.logprobs[j]),
                          [(*self._shown(t), float(lp))
                           for t, lp in zip(source.top_ids[j], source.top_logprobs[j])])
                for j in range(start, end)]

    def token_text(self, token: int) -> str:
        """One token's text (a partial character shows as U+FFFD)."""
        return self._shown(token)[0]

    def _shown(self, token: int) -> tuple[str, bytes]:
        """A token's text and exact bytes (a partial character shows as U+FFFD)."""
        data = self.token_bytes[int(token)]
        return data.decode("utf-8", errors="replace"), data

    def _collect_searches(self) -> None:
        for request_id, result in self.driver.finished:
            req = self._requests[request_id]
            data, finish, answer_tokens = self._search_result(req, result)
            req.emit(Event("search", data=data, finish=finish))
            self._done(req, answer_tokens)
        self.driver.finished.clear()

    def decode(self, tokens: Sequence[int]) -> str:
        """Text as clients see it: the special tokens (EOS included) left out."""
        return self.tokenizer.decode([t for t in tokens if t not in self.hidden])

    def _search_result(self, req: ServeRequest, result: SearchResult) -> tuple[dict, str, int]:
        """The search's body for the ``marco`` field (see protocol's module doc), its finish
        reason and the answer's tokens (at most ``max_tokens``: the answer is cut there,
        finish ``length``; ``path_text`` keeps all of it). Candidates are decoded once each;
        the tree's nodes are not (a reader of the tree decodes them)."""
        decode = decoding_once(self.decode)
        tokens_of: dict[str, list[int]] = {}

        def remembered(tokens: Sequence[int]) -> str:  # which tokens spelled the answer
            text = decode(tokens)
            tokens_of.setdefault(text, list(tokens))
            return text

        text, value = job_files.choose(result, req.search_job.final, remembered)
        answer = tokens_of[text]
        returned, finish, cut = text, "stop", answer
        if len(answer) > req.max_tokens:
            cut, finish = answer[:req.max_tokens], "length"
            returned = self.decode(cut)
        path = self._chosen_path(result, answer)
        # kept as the newest (found again if other searches' trees had pushed it out)
        tree = self.live_tree(req.tree_id) or LiveTree(req.tree_id, req.parsed.question,
                                                       self.decode, self.token_text)
        tree.finish(result.tree, final_answer(text), result.best_path)
        self._keep_tree(tree)
        return {"text": returned, "answer": final_answer(text), "path_text": text,
                "path": path, "value": value, "config": req.search_job.name,
                "rollouts": result.rollouts, "generated_tokens": result.generated_tokens,
                "usage": usage(len(req.prompt_ids), result.generated_tokens),
                "candidates": [{"node": c.node, "text": shown, "value": c.value,
                                "finished": c.finished, "answer": final_answer(shown)}
                               for c, shown in ((c, decode(c.tokens))
                                                for c in result.candidates)],
                "tree_id": req.tree_id}, finish, len(cut)

    @staticmethod
    def _chosen_path(result: SearchResult, answer: list[int]) -> list[int]:
        """Node ids from the root to the chosen answer's node: the search's best path when it
        spelled the answer, else the path of the candidate that did (``max_value``, ``vote``)."""
        if list(result.best_tokens) == answer:
            return [int(n) for n in result.best_path]
        node = next((c.node for c in result.candidates if list(c.tokens) == answer), None)
        return [int(n) for n in (result.best_path if node is None else result.tree.path(node))]

    def _keep_tree(self, tree: LiveTree) -> None:
        """A search's tree, growing or final, for GET /v1/trees/{id}: the last few only."""
        with self._trees_lock:
            self._trees[tree.id] = tree
            self._trees.move_to_end(tree.id)
            while len(self._trees) > KEPT_TREES:
                self._trees.popitem(last=False)

    def _first_token(self, req: ServeRequest) -> None:
        """Time to first token, counted once per request."""
        if req.first_token is None:
            req.first_token = time.perf_counter()
            self.metrics.ttft_sum += req.first_token - req.submitted
            self.metrics.ttft_count += 1

    def _done(self, req: ServeRequest, completion_tokens: int) -> None:
        self._finish(req.id, Event("done", data={"usage": usage(len(req.prompt_ids),
                                                                completion_tokens)}))

    def _drop(self, request_id: int) -> None:
        if request_id in self._requests:
            self.metrics.requests_cancelled += 1
            status = 503 if self._closing else 499  # 499: the client closed the request
            self._fail(request_id, RequestError("the request was cancelled", status=status,
                                                kind="cancelled"))

    def _fail(self, request_id: int, error: RequestError) -> None:
        self._turns.pop(request_id, None)
        for choice in self._choices.pop(request_id, []):
            if choice.engine_id is not None and not choice.text.over:
                self.engine.cancel(choice.engine_id)
        self.driver.cancel(request_id)  # a search's program, if it runs
        self._finish(request_id, Event("error", error=error))

    def _finish(self, request_id: int, event: Event) -> None:
        req = self._requests.pop(request_id)
        self.metrics.requests_finished += 1
        req.emit(event)


def engine_stop_strings(configs: Iterable[JobConfig]) -> tuple[str, ...]:
    """The engine's stop table: every offered search config's strings."""
    return tuple(dict.fromkeys(s for config in configs for s in config.stops))
