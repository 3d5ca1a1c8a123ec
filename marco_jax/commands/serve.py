"""Serve a model over an OpenAI-compatible HTTP API, tree search included.

    python scripts/serve.py --model PATH [--mesh data=D,tensor=T] [--host 127.0.0.1] \
        [--port 8000] [--kv-cache-gb G] [--search mcts-step ...] [--served-model-name NAME]

PATH is an HF checkpoint directory, a marco-jax Orbax checkpoint, a GGUF file, or
``builtin:tiny``. Every request runs on one engine (continuous batching);
``/v1/chat/completions`` also takes ``"marco": {"search": CONFIG, "iterations": N}``
or ``reasoning_effort`` (low / medium / high: --effort's configs) to answer with a
tree search on the same engine. The port answers at once: GET /health says
"starting" (503), and requests get 503, until the model is loaded and the engine's
programs compiled; then "ok". SIGTERM or Ctrl-C stop taking requests, let those
in flight finish for --grace-s seconds, then cancel the rest.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import socket
import sys
import threading
import time

from marco_jax.cli import MODEL_HELP, run, summary
from marco_jax.engine.options import add_engine_args, build_engine, engine_setup, model_dtype
from marco_jax.errors import MarcoError
from marco_jax.search.config import load_job_config

# JAX, the model and the server code are imported by main, after the arguments are
# checked, so that --help and a bad option answer at once.
ADMIT_WAIT_MS = 20.0  # marco_jax.serve.worker.ADMIT_WAIT_S (a test keeps them equal)
SEARCH_TOKENS = ('For a search request, max_tokens bounds the returned answer: its path\'s '
                 'tokens, cut there (finish_reason "length") and counted in usage. '
                 '"marco": {"max_total_tokens": N} bounds every token the search generates '
                 '(N >= the config\'s children), counted in the response\'s marco.usage.')
EFFORTS = {"low": ("mcts-step", 2), "medium": ("mcts-step", 8), "high": ("mcts-step", 32)}


SERVE_DECODE_STEPS = 4


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=summary(__doc__), epilog=SEARCH_TOKENS)
    parser.add_argument("--model", default="builtin:tiny",
                        help=MODEL_HELP)
    parser.add_argument("--served-model-name",
                        help="the name clients put in 'model' (default: the model path's name)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--search", action="append", metavar="CONFIG",
                        help="a search config requests may name (repeatable; default: "
                             "mcts-step)")
    parser.add_argument("--effort", action="append", metavar="LEVEL=CONFIG:ITERATIONS",
                        help="what reasoning_effort LEVEL runs (default: "
                             + ", ".join(f"{k}={c}:{n}" for k, (c, n) in EFFORTS.items()) + ")")
    parser.add_argument("--top-logprobs", type=int, default=5,
                        help="alternatives kept per token: the most a request may ask for")
    parser.add_argument("--max-requests", type=int, default=512,
                        help="requests in flight before new ones get 503")
    parser.add_argument("--max-n", type=int, default=128,
                        help="the most choices ('n') one request may ask for; more get 400 "
                             "(default 128, OpenAI's limit)")
    parser.add_argument("--max-body-mb", type=float, default=8.0,
                        help="the largest request body in MiB; larger ones get 413 (default 8)")
    parser.add_argument("--grace-s", type=float, default=30.0,
                        help="on shutdown, how long in-flight requests may take to finish")
    parser.add_argument("--admit-wait-ms", type=float, default=ADMIT_WAIT_MS,
                        help="when a request finds the engine idle, others join its first step "
                             "while they arrive less than this apart (0: start at once)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="compile the engine's programs on first use instead of at start")
    add_engine_args(parser)
    # A request that arrives mid-call waits for the call, and a finished one waits for its
    # call to end: short calls keep a small request's time under load near its idle time
    # (benchmarks/serve_reliability.py); batch jobs keep the engine's longer default.
    parser.set_defaults(decode_steps=SERVE_DECODE_STEPS)
    return parser.parse_args()


def efforts(items: list[str] | None) -> dict[str, tuple[str, int]]:
    if not items:
        return dict(EFFORTS)
    out = {}
    for item in items:
        level, _, rest = item.partition("=")
        config, _, iterations = rest.partition(":")
        if level not in EFFORTS or not config or not iterations.isdigit():
            raise MarcoError(f"--effort {item!r}: expected LEVEL=CONFIG:ITERATIONS with LEVEL in "
                             f"{', '.join(EFFORTS)}")
        out[level] = (config, int(iterations))
    return out


def stage(message: str) -> None:
    """What the server is doing during its silent minute of start-up (printed, not logged:
    JAX may have claimed the root logger before ``basicConfig``)."""
    print(f"serve: {message}", file=sys.stderr, flush=True)


def warm_up(engine) -> int:
    """Compile the engine's programs, showing how far it has got: a bar on a terminal,
    else (a log) a line every eighth of the way; returns how many were compiled."""
    from tqdm import tqdm

    bar = None

    def on_program(done: int, total: int) -> None:
        nonlocal bar
        if not sys.stderr.isatty():
            if done % -(-total // 8) == 0 or done == total:
                stage(f"compiled {done}/{total} programs")
            return
        if bar is None:
            bar = tqdm(total=total, desc="serve: compiling", unit="program", file=sys.stderr)
        bar.update(done - bar.n)

    try:
        return engine.warmup(on_program)
    finally:
        if bar is not None:
            bar.close()


def check_port(host: str, port: int) -> None:
    """Fail at once, not after loading and compiling, when the port cannot be listened on."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):
            pass
    except OSError as error:
        raise MarcoError(f"cannot listen on port {port} of {host}: {error.strerror or error} "
                         "(choose another with --port)") from None


def check_limits(args: argparse.Namespace) -> None:
    """Refuse settings the server cannot run with, naming the option."""
    if args.admit_wait_ms < 0:
        raise MarcoError(f"--admit-wait-ms must be >= 0, got {args.admit_wait_ms}")
    if args.max_n < 1:
        raise MarcoError(f"--max-n must be >= 1, got {args.max_n}")
    if not args.max_body_mb > 0:
        raise MarcoError(f"--max-body-mb must be > 0, got {args.max_body_mb}")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    check_limits(args)
    check_port(args.host, args.port)
    searches = {name: load_job_config(name) for name in args.search or ["mcts-step"]}
    for level, (name, iterations) in efforts(args.effort).items():
        searches[f"effort:{level}"] = load_job_config(name, iterations=iterations)
    for name, config in searches.items():
        if config.action_tree is not None and "checker" in config.action_tree.models:
            raise MarcoError(f"search config {name!r} gives node types to a second (checker) "
                             "model, which the server does not load")
    import uvicorn

    from marco_jax.serve.app import ServerSettings, create_app, freeze_heap

    name = args.served_model_name or pathlib.Path(str(args.model)).name
    settings = ServerSettings(name, args.max_model_len, args.top_logprobs, searches,
                              args.grace_s, args.max_n, args.max_body_mb)
    app = create_app(None, settings)  # starting until the engine is ready
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                           timeout_graceful_shutdown=int(args.grace_s),
                                           log_level="info"))
    failed: list[BaseException] = []

    def start() -> None:
        """Load, build and compile while the port answers /health with "starting"; a
        failure stops the server and is raised by main."""
        try:
            worker = start_engine(args, searches)
        except BaseException as error:  # noqa: BLE001 (main raises it)
            failed.append(error)
            server.should_exit = True
            return
        freeze_heap()
        if app.state.handlers.open(worker):
            stage(f"serving '{name}' on http://{args.host}:{args.port} (/health: ok)")

    stage(f"listening on http://{args.host}:{args.port}; /health says starting until the "
          "engine is ready")
    threading.Thread(target=start, name="marco-start", daemon=True).start()
    server.run()
    if failed:
        raise failed[0]


def start_engine(args: argparse.Namespace, searches: dict):
    """The engine's worker, not started: the model loaded, the engine built and (unless
    --no-warmup) its programs compiled, each stage shown."""
    from marco_jax.loading import load
    from marco_jax.serve.worker import EngineWorker, engine_stop_strings

    dtype = model_dtype(args)
    started = time.perf_counter()
    stage(f"loading {args.model} (weights and tokenizer)")
    loaded = load(args.model, param_dtype=dtype, compute_dtype=dtype)
    stage(f"loaded in {time.perf_counter() - started:.1f} s; building the engine (KV cache)")
    engine = build_engine(loaded, *engine_setup(args, top_logprobs=args.top_logprobs),
                          engine_stop_strings(searches.values()))
    if not args.no_warmup:
        started = time.perf_counter()
        stage("compiling the engine's programs, so that no request waits for a compile "
              "(--no-warmup skips this)")
        stage(f"compiled {warm_up(engine)} engine programs in "
              f"{time.perf_counter() - started:.1f} s")
    return EngineWorker(engine, loaded.tokenizer, loaded.eos_ids, args.max_requests,
                        admit_wait_s=args.admit_wait_ms / 1000)


def cli() -> None:
    """The console command (errors as one line, exit 2)."""
    run(main)


if __name__ == "__main__":
    cli()
