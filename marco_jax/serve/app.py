"""The OpenAI-compatible HTTP app over one :class:`EngineWorker`: its events become OpenAI's
JSON, whole or streamed; a client that disconnects cancels its request, freeing its slots.
Bodies are parsed and prompts tokenized in a thread, so a huge prompt never stalls the event
loop (``/health`` and the other requests' streams).

The app may answer before its engine exists: made with no worker, it says ``starting``
(``/health``: 503) and refuses requests with 503 until :meth:`_Handlers.open` gives it the
worker, once the model is loaded and its programs compiled (``scripts/serve.py``)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import gc
import html
import json
import pathlib
import random
import threading
import time
from typing import Any, AsyncIterator, Callable, Mapping

from fastapi import FastAPI, Request
from fastapi.responses import (HTMLResponse, JSONResponse, PlainTextResponse, Response,
                               StreamingResponse)

from marco_jax import prompts
from marco_jax.engine.engine import FILTER_WIDTH
from marco_jax.search import tree_html as tree_html_lib
from marco_jax.search.config import JobConfig
from marco_jax.serve import protocol
from marco_jax.serve.protocol import GenerationRequest, RequestError
from marco_jax.serve.worker import KEPT_TREES, EngineWorker, Event, LiveTree, ServeRequest

PAGE = pathlib.Path(__file__).with_name("page.html")


@dataclasses.dataclass
class ServerSettings:
    model_name: str
    max_model_len: int
    top_logprobs: int  # the engine's k: the most top_logprobs a request may ask for
    searches: Mapping[str, JobConfig]  # offered search configs (and effort:LEVEL entries)
    grace_s: float = 30.0  # shutdown: in-flight work may finish for this long
    max_n: int = 128  # the most choices one request may ask for (OpenAI's own limit)
    max_body_mb: float = 8.0  # the largest request body, in MiB (413 beyond)


async def _error(_: Request, error: RequestError) -> JSONResponse:
    """Every refusal: OpenAI's error body with its HTTP status."""
    return JSONResponse(error.body(), status_code=error.status)


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _starting() -> RequestError:
    return RequestError("the server is starting (loading the model and compiling its programs); "
                        "retry once GET /health answers ok", status=503, kind="server_error",
                        code="starting")


@dataclasses.dataclass(eq=False)  # hashable: its bound methods are the endpoints
class _Handlers:
    """The app's endpoints over its worker (one instance per app); no worker yet: starting."""

    _worker: EngineWorker | None
    settings: ServerSettings
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    _closed: bool = False

    @property
    def worker(self) -> EngineWorker:
        """The worker; 503 (``starting``) while there is none yet."""
        if self._worker is None:
            raise _starting()
        return self._worker

    def open(self, worker: EngineWorker) -> bool:
        """Begin serving on ``worker`` (started here): ``/health`` says ok from now on. False
        when the app has already shut down (the worker is not started)."""
        with self._lock:
            if self._closed:
                return False
            if not worker.alive:
                worker.start()
            self._worker = worker
            return True

    def close(self, grace_s: float) -> None:
        """Shut down: in-flight work may finish for ``grace_s``; a worker given later is not
        started."""
        with self._lock:
            self._closed, worker = True, self._worker
        if worker is not None:
            worker.close(grace_s)

    def serve_request(self, parsed: GenerationRequest,
                      emit: Callable[[Event], None]) -> ServeRequest:
        """The worker's request for a parsed body, checked against this server's model."""
        if parsed.model != self.settings.model_name:
            raise RequestError(f"the model '{parsed.model}' does not exist; this server runs "
                               f"'{self.settings.model_name}'", "model", status=404,
                               code="model_not_found")
        if parsed.n > self.settings.max_n:
            raise RequestError(f"'n' must be at most {self.settings.max_n} on this server, "
                               f"got {parsed.n}", "n")
        if parsed.top_k > FILTER_WIDTH:
            raise RequestError(f"'top_k' must be at most {FILTER_WIDTH}, got {parsed.top_k}",
                               "top_k")
        search_job = self.search_job(parsed)
        prompt_ids = self.prompt_ids(parsed, search_job)
        field = "messages" if parsed.kind == "chat" else "prompt"
        limit = self.settings.max_model_len
        if not prompt_ids:
            raise RequestError(f"'{field}' renders to no tokens", field)
        too_long = (f"'{field}' has {len(prompt_ids)} tokens; this model's context is "
                    f"{limit} tokens")
        if len(prompt_ids) >= limit:
            raise RequestError(too_long, field)
        max_tokens = parsed.max_tokens or limit - len(prompt_ids)
        if search_job is None and len(prompt_ids) + max_tokens > limit:
            raise RequestError(f"{too_long} and max_tokens asks for {max_tokens} more",
                               "max_tokens")
        seed = parsed.seed if parsed.seed is not None else random.randrange(2 ** 31)
        return ServeRequest(parsed, prompt_ids, max_tokens, seed, emit, search_job,
                            parsed.search_max_total_tokens)

    def prompt_ids(self, parsed: GenerationRequest, search_job: JobConfig | None) -> list[int]:
        """A search's prompt is its config's rendering of the question."""
        if search_job is None and isinstance(parsed.prompt, list):
            vocab = self.worker.engine.cfg.vocab_size
            if not all(0 <= t < vocab for t in parsed.prompt):
                raise RequestError(f"'prompt' token ids must be in [0, {vocab})", "prompt")
            return list(parsed.prompt)
        text = parsed.prompt if search_job is None else prompts.render(
            search_job.template, search_job.instruction + parsed.question)
        return self.worker.tokenizer.encode(text, add_special_tokens=False)

    def search_job(self, parsed: GenerationRequest) -> JobConfig | None:
        """The offered config the request names, with its iterations and token cap."""
        if parsed.search is None:
            return None
        config = self.settings.searches.get(parsed.search)
        if config is None:
            offered = ", ".join(sorted(self.settings.searches)) or "none"
            raise RequestError(f"'marco.search': no search config '{parsed.search}' on this "
                               f"server (offered: {offered})", "marco.search")
        changes = {} if parsed.search_iterations is None else {
            "iterations": parsed.search_iterations}
        if parsed.search_max_total_tokens is not None:
            changes["token_budget"] = self.token_budget(parsed, config)
        # the config's sampling, but for what the request set itself (see protocol's doc)
        changes |= {name: max(getattr(parsed, name), 0) if name == "top_k"
                    else getattr(parsed, name) for name in parsed.sampling}
        return dataclasses.replace(config, search=dataclasses.replace(config.search, **changes))

    @staticmethod
    def token_budget(parsed: GenerationRequest, config: JobConfig) -> int:
        """The search's own stopping rule for ``marco.max_total_tokens``: no round starts with
        fewer tokens left than its calls (``children``), which then share what is left (the
        worker cuts their lengths), so the total never passes the cap."""
        total, search = parsed.search_max_total_tokens, config.search
        if total < search.children:
            raise RequestError(f"'marco.max_total_tokens' must be at least {search.children} "
                               f"(a token for each of the {search.children} calls of a round of "
                               f"'{parsed.search}'), got {total}", "marco.max_total_tokens")
        budget = total - search.children + 1
        return min(budget, search.token_budget) if search.token_budget else budget

    async def generate(self, http: Request) -> Response:
        """``POST /v1/completions`` and ``POST /v1/chat/completions``."""
        self.worker  # noqa: B018 (503 while starting, before reading the body)
        raw = await self.body(http)
        queue: asyncio.Queue[Event] = asyncio.Queue()
        emit = functools.partial(asyncio.get_running_loop().call_soon_threadsafe, queue.put_nowait)
        chat = http.url.path.endswith("/chat/completions")
        req = await asyncio.to_thread(self.prepare, raw, chat, emit)
        self.worker.submit(req)
        if req.parsed.stream:
            return StreamingResponse(self.stream(req, queue), media_type="text/event-stream")
        return await self.collect(http, req, queue)

    async def body(self, http: Request) -> bytes:
        """The body, refused (413) as soon as it is known to pass ``max_body_mb``."""
        limit = int(self.settings.max_body_mb * 2 ** 20)
        too_large = RequestError(f"the request body is larger than this server's limit of "
                                 f"{self.settings.max_body_mb:g} MiB (--max-body-mb)",
                                 status=413, code="request_too_large")
        declared = http.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        data = bytearray()
        async for chunk in http.stream():
            data += chunk
            if len(data) > limit:
                raise too_large
        return bytes(data)

    def prepare(self, raw: bytes, chat: bool, emit: Callable[[Event], None]) -> ServeRequest:
        """Parse, check and tokenize a body (in a thread: a long prompt takes seconds)."""
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError("the request body is not valid JSON")
        parse = protocol.parse_chat if chat else protocol.parse_completion
        return self.serve_request(parse(body, self.settings.top_logprobs), emit)

    async def next_event(self, http: Request, req: ServeRequest,
                         queue: asyncio.Queue) -> Event | None:
        """The request's next event, or None once its client has gone (which cancels it)."""
        while True:
            try:
                return await asyncio.wait_for(queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await http.is_disconnected():
                    self.worker.cancel(req.id)
                    return None

    async def collect(self, http: Request, req: ServeRequest, queue: asyncio.Queue) -> Response:
        """The whole response, once the request is done."""
        parsed = req.parsed
        texts: dict[int, str] = collections.defaultdict(str)
        tokens: dict[int, list[protocol.TokenInfo]] = collections.defaultdict(list)
        finishes: dict[int, str | None] = {}
        result = None
        while True:
            event = await self.next_event(http, req, queue)
            if event is None:
                return Response(status_code=499)
            if event.kind == "done":
                break
            if event.kind == "error":
                raise event.error
            if event.kind == "delta":
                texts[event.index] += event.text
                tokens[event.index] += event.tokens
                if event.finish:
                    finishes[event.index] = event.finish
            elif event.kind == "search":  # its one choice: the chosen answer
                result = event.data
                texts[0], finishes[0] = result["text"], event.finish
        def body() -> bytes:
            kind = parsed.kind
            choices = [protocol.choice_body(
                kind, i, texts[i], finishes.get(i),
                None if parsed.logprobs is None or result is not None
                else protocol.logprobs_block(kind, tokens[i], parsed.logprobs))
                for i in range(parsed.n)]
            extra = {} if result is None else {"marco": result}
            return json.dumps(protocol.response_body(
                kind, protocol.new_id(kind), parsed.model, choices, usage=event.data["usage"],
                **extra), ensure_ascii=False).encode()

        # n choices with their log-probabilities make a large body: encoded off the loop
        return Response(await asyncio.to_thread(body), media_type="application/json")

    async def stream(self, req: ServeRequest, queue: asyncio.Queue) -> AsyncIterator[str]:
        """OpenAI's chunks as server-sent events; a client that goes away cancels the request."""
        parsed, kind = req.parsed, req.parsed.kind
        chunk = functools.partial(protocol.response_body, kind, protocol.new_id(kind),
                                  parsed.model, chunk=True)
        offsets: dict[int, int] = {}  # each begun choice's text so far
        finished = False
        try:
            while not finished:
                event = await queue.get()
                finished = event.kind in ("done", "error")
                if event.kind == "delta":
                    at = offsets.get(event.index)
                    logprobs = None if parsed.logprobs is None else protocol.logprobs_block(
                        kind, event.tokens, parsed.logprobs, at or 0)
                    offsets[event.index] = (at or 0) + sum(len(t.text) for t in event.tokens)
                    yield _sse(chunk([protocol.choice_body(
                        kind, event.index, event.text, event.finish, logprobs, delta=True,
                        role=at is None)]))
                elif event.kind == "progress":
                    yield _sse(chunk([], marco={"progress": event.data}))
                elif event.kind == "search":
                    choice = protocol.choice_body(kind, 0, event.data["text"], event.finish,
                                                  None, delta=True, role=True)
                    yield _sse(chunk([choice], marco=event.data))
                elif event.kind == "error":
                    yield _sse(event.error.body())
                elif event.kind == "done" and parsed.include_usage:
                    yield _sse(chunk([], usage=event.data["usage"]))
            yield "data: [DONE]\n\n"
        finally:
            if not finished:
                self.worker.cancel(req.id)

    async def page(self) -> Response:
        """The page for people, filled in with the tree page's CSS and JS and this server's."""
        searches = sorted(k for k in self.settings.searches if not k.startswith("effort:"))
        return HTMLResponse(
            PAGE.read_text(encoding="utf-8")
            .replace("/*TREE_CSS*/", tree_html_lib.CSS).replace("/*TREE_JS*/", tree_html_lib.JS)
            .replace("/*MODEL*/", html.escape(self.settings.model_name))
            .replace("/*SEARCHES*/", json.dumps(searches)))

    async def models(self) -> dict:
        return {"object": "list", "data": [{
            "id": self.settings.model_name, "object": "model", "created": int(time.time()),
            "owned_by": "marco-jax", "max_model_len": self.settings.max_model_len}]}

    def live_tree(self, tree_id: str) -> LiveTree:
        live = self.worker.live_tree(tree_id)
        if live is None:
            raise RequestError(f"no tree '{tree_id}' (the server keeps the last {KEPT_TREES})",
                               "tree_id", status=404)
        return live

    async def tree(self, tree_id: str, since: str | None = None) -> Response:
        """A search's tree, growing or final; ``?since=N``: only the nodes with id >= N, and
        besides the tree's fields ``size`` (all its nodes), ``final`` (the search is over)
        and every node's ``visits`` and mean ``values`` (backups change old nodes'). Node
        texts are decoded in a thread, each once."""
        first = 0
        if since is not None:
            if not since.isdigit():
                raise RequestError(f"'since' must be a node id (an integer >= 0), got {since!r}",
                                   "since")
            first = int(since)
        live = self.live_tree(tree_id)
        final = live.final  # before the record: a final record is then surely whole
        if since is None:
            return JSONResponse((await asyncio.to_thread(live.record)).to_json())
        record, visits, values = await asyncio.to_thread(live.growth, first)
        return JSONResponse(record.to_json() | {"since": first, "size": len(visits),
                                                "final": final, "visits": visits,
                                                "values": values})

    async def tree_node(self, tree_id: str, node: str) -> Response:
        """One node of a search's tree with its tokens' scores (``tokens``: each token's
        text, confidence and top alternatives), for the page's node panel."""
        live = self.live_tree(tree_id)
        record = await asyncio.to_thread(live.node, int(node)) if node.isdigit() else None
        if record is None:
            raise RequestError(f"tree '{tree_id}' has no node {node!r} (it has {live.size})",
                               "node", status=404)
        return JSONResponse(record.to_json())

    async def tree_html(self, tree_id: str) -> Response:
        live = self.live_tree(tree_id)
        record = await asyncio.to_thread(live.record)
        return HTMLResponse(tree_html_lib.render_fragment(record))

    async def health(self) -> Response:
        """200 ``ok`` once the engine is ready; 503 ``starting`` before (loading, compiling),
        503 when its thread has stopped."""
        if self._worker is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        if not self._worker.alive:
            return JSONResponse({"status": "engine thread stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def metrics(self) -> Response:
        """Prometheus' text format."""
        worker = self.worker
        m, engine = worker.metrics, worker.engine
        rows = [  # (name after "marco_", type, help, value)
            ("requests_in_flight", "gauge", "HTTP requests queued or running", worker.in_flight),
            ("engine_running_requests", "gauge", "engine requests in decode slots", m.running),
            ("engine_waiting_requests", "gauge",
             "engine requests and choices waiting for a slot", m.waiting),
            ("engine_slot_utilisation", "gauge",
             "share of decode slot-steps that produced a kept token", engine.stats.utilisation),
            ("engine_free_kv_blocks", "gauge", "KV blocks free or reusable",
             engine.blocks.available),
            ("generated_tokens_total", "counter", "tokens generated", m.generated_tokens),
            ("generation_tokens_per_second", "gauge", "tokens generated per second, last 10 s",
             m.tokens_per_s()),
            ("requests_started_total", "counter", "requests begun", m.requests_started),
            ("requests_finished_total", "counter", "requests ended", m.requests_finished),
            ("requests_cancelled_total", "counter", "requests dropped by their client",
             m.requests_cancelled),
            ("time_to_first_token_seconds", "summary", "time from request to first token",
             {"_sum": m.ttft_sum, "_count": m.ttft_count}),
        ]
        lines = []
        for name, metric_type, text, value in rows:
            samples = value if isinstance(value, dict) else {"": value}  # a summary's are named
            lines += [f"# HELP marco_{name} {text}", f"# TYPE marco_{name} {metric_type}"]
            lines += [f"marco_{name}{suffix} {sample}" for suffix, sample in samples.items()]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


def freeze_heap() -> None:
    """Call once the model is loaded and compiled, before serving. What loading made
    (modules, the weights' host objects: millions) is never garbage; frozen, the
    collector's full passes skip it instead of pausing every thread for a third of a
    second in the middle of a request (measured on the demo model: the first request's
    time to first token)."""
    gc.collect()
    gc.freeze()


def create_app(worker: EngineWorker | None, settings: ServerSettings) -> FastAPI:
    """The app; on shutdown, in-flight work may finish for ``settings.grace_s``. With no
    worker it is ``starting`` until ``app.state.handlers.open(worker)``."""
    handlers = _Handlers(None, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        if worker is not None:
            handlers.open(worker)
        yield
        await asyncio.get_running_loop().run_in_executor(None, handlers.close, settings.grace_s)

    app = FastAPI(title="marco-jax", lifespan=lifespan)
    app.state.handlers = handlers
    app.add_exception_handler(RequestError, _error)
    app.post("/v1/completions")(handlers.generate)
    app.post("/v1/chat/completions")(handlers.generate)
    for path, endpoint in {"/": handlers.page, "/v1/models": handlers.models,
                           "/v1/trees/{tree_id}": handlers.tree,
                           "/v1/trees/{tree_id}/html": handlers.tree_html,
                           "/v1/trees/{tree_id}/nodes/{node}": handlers.tree_node,
                           "/health": handlers.health, "/metrics": handlers.metrics}.items():
        app.get(path)(endpoint)
    return app
