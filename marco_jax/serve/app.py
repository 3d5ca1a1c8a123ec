"""The OpenAI-compatible HTTP app over one :class:`EngineWorker`.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (streamed as
server-sent events when asked), ``GET /v1/models``, ``GET /health``,
``GET /metrics`` (Prometheus text) and ``GET /v1/trees/{id}`` (a finished
search's tree, for the page). A handler parses and checks the body, renders
and tokenizes the prompt, queues a job with the worker and turns the worker's
events into OpenAI's JSON; a client that disconnects cancels its job, which
frees its slots and blocks on the next engine step.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import html
import itertools
import json
import pathlib
import random
import time
from typing import Any, AsyncIterator, Mapping

from fastapi import FastAPI, Request
from fastapi.responses import (HTMLResponse, JSONResponse, PlainTextResponse, Response,
                               StreamingResponse)

from marco_jax.engine.engine import FILTER_WIDTH
from marco_jax.search import tree_html as tree_html_lib
from marco_jax.search.config import JobConfig, load_job_config
from marco_jax.search.record import TreeRecord
from marco_jax.serve import protocol
from marco_jax.serve.protocol import GenerationRequest, RequestError
from marco_jax.serve.worker import EngineWorker, Event, Job

KEPT_TREES = 64  # search trees kept for GET /v1/trees/{id}
PAGE = pathlib.Path(__file__).with_name("page.html")


@dataclasses.dataclass
class ServerSettings:
    model_name: str
    max_model_len: int
    top_logprobs: int  # the engine's k: the most top_logprobs a request may ask for
    searches: Mapping[str, JobConfig]  # offered search configs (and effort:LEVEL entries)
    grace_s: float = 30.0  # shutdown: in-flight work may finish for this long


def _error(error: RequestError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class _Handlers:
    """Request handling: one instance per app."""

    def __init__(self, worker: EngineWorker, settings: ServerSettings):
        self.worker, self.settings = worker, settings
        self.tokenizer = worker.tokenizer
        self.trees: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self.tree_ids = itertools.count()

    # ---- parsing ---------------------------------------------------------------------

    def job(self, request: GenerationRequest, emit) -> Job:
        settings = self.settings
        if request.model != settings.model_name:
            raise RequestError(f"the model '{request.model}' does not exist; this server runs "
                               f"'{settings.model_name}'", "model", status=404,
                               code="model_not_found")
        if request.top_k > FILTER_WIDTH:
            raise RequestError(f"'top_k' must be at most {FILTER_WIDTH}, got {request.top_k}",
                               "top_k")
        search = self.search_config(request)
        if search is not None:
            text = search.prompt_text(request.question)
            prompt_ids = self.tokenizer.encode(text, add_special_tokens=False)
        elif isinstance(request.prompt, str):
            prompt_ids = self.tokenizer.encode(request.prompt, add_special_tokens=False)
        else:
            vocab = self.worker.engine.cfg.vocab_size
            if not all(0 <= t < vocab for t in request.prompt):
                raise RequestError(f"'prompt' token ids must be in [0, {vocab})", "prompt")
            prompt_ids = list(request.prompt)
        field = "messages" if request.kind == "chat" else "prompt"
        limit = settings.max_model_len
        if not prompt_ids:
            raise RequestError(f"'{field}' renders to no tokens", field)
        if len(prompt_ids) >= limit:
            raise RequestError(f"this model's maximum context length is {limit} tokens; the "
                               f"prompt ({field}) has {len(prompt_ids)}", field)
        max_tokens = request.max_tokens or limit - len(prompt_ids)
        if search is None and len(prompt_ids) + max_tokens > limit:
            raise RequestError(f"this model's maximum context length is {limit} tokens; the "
                               f"prompt ({field}) has {len(prompt_ids)} and max_tokens asks "
                               f"for {max_tokens} more", "max_tokens")
        seed = request.seed if request.seed is not None else random.randrange(2 ** 31)
        tree_id = None if search is None else f"tree-{next(self.tree_ids)}"
        return Job(request, prompt_ids, max_tokens, seed, emit, search=search, tree_id=tree_id)

    def search_config(self, request: GenerationRequest) -> JobConfig | None:
        options = request.search
        if options is None:
            return None
        config = self.settings.searches.get(options.config)
        if config is None:
            offered = ", ".join(sorted(self.settings.searches)) or "none"
            raise RequestError(f"'marco.search': no search config '{options.config}' on this "
                               f"server (offered: {offered})", "marco.search")
        if options.iterations is not None and options.iterations != config.search.iterations:
            config = load_job_config(config.name, iterations=options.iterations)
        return config

    # ---- generation --------------------------------------------------------------------

    async def generate(self, http: Request, kind: str) -> Response:
        try:
            body = await http.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(RequestError("the request body is not valid JSON"))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        try:
            parse = protocol.parse_chat if kind == "chat" else protocol.parse_completion
            request = parse(body, self.settings.top_logprobs)
            job = self.job(request, emit)
            self.worker.submit(job)
        except RequestError as error:
            return _error(error)
        if request.stream:
            return StreamingResponse(self.stream(job, queue), media_type="text/event-stream")
        return await self.collect(http, job, queue)

    async def collect(self, http: Request, job: Job, queue: asyncio.Queue) -> Response:
        """Wait for the job's events and answer once; a client that went away
        cancels the job."""
        request = job.request
        kind = request.kind
        texts = collections.defaultdict(list)
        tokens = collections.defaultdict(list)
        finishes: dict[int, str | None] = {}
        search = None
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await http.is_disconnected():
                    self.worker.cancel(job.id)
                    return Response(status_code=499)
                continue
            if event.kind == "delta":
                texts[event.index].append(event.text)
                tokens[event.index] += event.tokens
                if event.finish:
                    finishes[event.index] = event.finish
            elif event.kind == "search":
                search = event.data
            elif event.kind == "progress":
                self.progress(job, event.data)
            elif event.kind == "error":
                status = event.data.pop("status", 500)
                return JSONResponse(event.data, status_code=status)
            elif event.kind == "done":
                break
        rid = protocol.new_id(kind)
        if search is not None:
            choice = protocol.choice_body(kind, 0, search["text"], "stop", None)
            return JSONResponse(protocol.response_body(
                kind, rid, request.model, [choice], event.data["usage"],
                {"marco": self.search_extension(job, search)}))
        choices = [protocol.choice_body(
            kind, i, "".join(texts[i]), finishes.get(i),
            None if request.logprobs is None
            else protocol.logprobs_block(kind, tokens[i], request.logprobs))
            for i in range(request.n)]
        return JSONResponse(protocol.response_body(kind, rid, request.model, choices,
                                                   event.data["usage"]))

    def keep_tree(self, tree_id: str, tree: TreeRecord) -> None:
        self.trees[tree_id] = tree
        self.trees.move_to_end(tree_id)
        while len(self.trees) > KEPT_TREES:
            self.trees.popitem(last=False)

    def search_extension(self, job: Job, search: dict) -> dict:
        """The response's ``marco`` field; the tree goes to GET /v1/trees/{id}."""
        self.keep_tree(job.tree_id, search.pop("tree"))
        return {**search, "tree_id": job.tree_id}

    def progress(self, job: Job, data: dict) -> dict:
        """A growing tree is kept (the page fetches it); the event carries its size."""
        nodes = data.pop("nodes")
        self.keep_tree(job.tree_id, TreeRecord(job.tree_id, nodes, job.request.question))
        return {**data, "nodes": len(nodes), "tree_id": job.tree_id}

    async def stream(self, job: Job, queue: asyncio.Queue) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format; ``[DONE]`` ends them. If
        the client disconnects, the response task is cancelled here and the job
        with it."""
        request = job.request
        kind, model = request.kind, request.model
        rid = protocol.new_id(kind)
        opened: set[int] = set()
        offsets: dict[int, int] = collections.defaultdict(int)
        finished = False
        try:
            while True:
                event = await queue.get()
                if event.kind == "delta":
                    logprobs = None
                    if request.logprobs is not None:
                        logprobs = protocol.logprobs_block(kind, event.tokens, request.logprobs,
                                                           offsets[event.index])
                        offsets[event.index] += sum(len(t.text) for t in event.tokens)
                    yield _sse(protocol.chunk_body(kind, rid, model, event.index, event.text,
                                                   event.finish, logprobs,
                                                   role=event.index not in opened))
                    opened.add(event.index)
                elif event.kind == "progress":
                    progress = self.progress(job, event.data)
                    yield _sse(protocol.chunk_body(kind, rid, model, None,
                                                   extra={"marco": {"progress": progress}}))
                elif event.kind == "search":
                    extension = self.search_extension(job, event.data)
                    yield _sse(protocol.chunk_body(kind, rid, model, 0, extension["text"],
                                                   "stop", role=True,
                                                   extra={"marco": extension}))
                elif event.kind == "error":
                    finished = True
                    event.data.pop("status", None)
                    yield _sse(event.data)
                    yield "data: [DONE]\n\n"
                    return
                elif event.kind == "done":
                    finished = True
                    if request.include_usage:
                        yield _sse(protocol.chunk_body(kind, rid, model, None,
                                                       use=event.data["usage"]))
                    yield "data: [DONE]\n\n"
                    return
        finally:
            if not finished:
                self.worker.cancel(job.id)

    # ---- the rest ------------------------------------------------------------------------

    def page(self) -> str:
        """The page for people (``page.html``), with the tree styles of
        ``show_tree.py``, the model's name and the offered search configs."""
        searches = sorted(k for k in self.settings.searches if not k.startswith("effort:"))
        return (PAGE.read_text(encoding="utf-8")
                .replace("/*TREE_CSS*/", tree_html_lib.CSS).replace("/*TREE_JS*/", tree_html_lib.JS)
                .replace("/*MODEL*/", html.escape(self.settings.model_name))
                .replace("/*SEARCHES*/", json.dumps(searches)))

    def models(self) -> dict:
        return {"object": "list", "data": [{
            "id": self.settings.model_name, "object": "model", "created": int(time.time()),
            "owned_by": "marco-jax", "max_model_len": self.settings.max_model_len}]}

    def metrics(self) -> str:
        m = self.worker.metrics
        engine = self.worker.engine
        rows = [
            ("marco_requests_in_flight", "gauge", "HTTP requests queued or running",
             self.worker.in_flight),
            ("marco_engine_running_requests", "gauge", "engine requests in decode slots",
             m.running),
            ("marco_engine_waiting_requests", "gauge", "engine requests waiting for a slot",
             m.waiting),
            ("marco_engine_slot_utilisation", "gauge",
             "share of decode slot-steps that produced a kept token", engine.stats.utilisation),
            ("marco_engine_free_kv_blocks", "gauge", "KV blocks free or reusable",
             engine.blocks.available),
            ("marco_generated_tokens_total", "counter", "tokens generated", m.generated_tokens),
            ("marco_generation_tokens_per_second", "gauge", "tokens generated per second, last 10 s",
             m.tokens_per_s()),
            ("marco_requests_started_total", "counter", "requests begun", m.requests_started),
            ("marco_requests_finished_total", "counter", "requests ended", m.requests_finished),
            ("marco_requests_cancelled_total", "counter", "requests dropped by their client",
             m.requests_cancelled),
        ]
        lines = []
        for name, kind, text, value in rows:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        lines += ["# HELP marco_time_to_first_token_seconds time from request to first token",
                  "# TYPE marco_time_to_first_token_seconds summary",
                  f"marco_time_to_first_token_seconds_sum {m.ttft_sum}",
                  f"marco_time_to_first_token_seconds_count {m.ttft_count}"]
        return "\n".join(lines) + "\n"


def create_app(worker: EngineWorker, settings: ServerSettings) -> FastAPI:
    """The app; its lifespan starts the worker thread and, on shutdown, lets
    in-flight work finish for ``settings.grace_s`` before cancelling the rest."""
    handlers = _Handlers(worker, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        if not worker.alive:
            worker.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, worker.close, settings.grace_s)

    app = FastAPI(title="marco-jax", lifespan=lifespan)
    app.state.handlers = handlers

    @app.post("/v1/completions")
    async def completions(http: Request) -> Response:
        return await handlers.generate(http, "completion")

    @app.post("/v1/chat/completions")
    async def chat(http: Request) -> Response:
        return await handlers.generate(http, "chat")

    @app.get("/v1/models")
    async def models() -> dict:
        return handlers.models()

    @app.get("/v1/trees/{tree_id}")
    async def tree(tree_id: str) -> Response:
        found = handlers.trees.get(tree_id)
        if found is None:
            return _error(RequestError(f"no tree '{tree_id}' (the server keeps the last "
                                       f"{KEPT_TREES})", "tree_id", status=404))
        return JSONResponse(found.to_json())

    @app.get("/")
    async def page() -> Response:
        return HTMLResponse(handlers.page())

    @app.get("/v1/trees/{tree_id}/html")
    async def tree_html(tree_id: str) -> Response:
        found = handlers.trees.get(tree_id)
        if found is None:
            return _error(RequestError(f"no tree '{tree_id}'", "tree_id", status=404))
        return HTMLResponse(tree_html_lib.render_fragment(found))

    @app.get("/health")
    async def health() -> Response:
        if not worker.alive:
            return JSONResponse({"status": "engine thread stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(handlers.metrics(), media_type="text/plain; version=0.0.4")

    return app
