"""The server answers before its engine is ready: /health says starting (503) and requests
get 503 until the worker is given, then ok."""

import threading
import time

import httpx2 as httpx
import uvicorn

from marco_jax.engine.engine import Engine
from marco_jax.loading import load
from marco_jax.serve.app import ServerSettings, create_app
from marco_jax.serve.worker import EngineWorker
from serve_test import CONFIG


def test_health_says_starting_until_the_engine_is_ready_then_ok():
    app = create_app(None, ServerSettings("tiny", CONFIG.max_model_len, 5, {}, grace_s=1))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    body = {"model": "tiny", "prompt": "a", "max_tokens": 2, "temperature": 0}
    try:
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503 and health.json() == {"status": "starting"}
        refused = httpx.post(f"{url}/v1/completions", json=body)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "starting"
        assert httpx.get(f"{url}/v1/trees/tree-0").status_code == 503
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "tiny"
        tiny = load("builtin:tiny")  # loading and compiling, as scripts/serve.py does
        worker = EngineWorker(Engine(tiny.model, tiny.eos_ids, CONFIG), tiny.tokenizer,
                              tiny.eos_ids)
        assert app.state.handlers.open(worker) and worker.alive
        health = httpx.get(f"{url}/health")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        answer = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 2
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not worker.alive  # the app's shutdown closed the worker it was given
    late = EngineWorker(worker.engine, tiny.tokenizer, tiny.eos_ids)
    assert not app.state.handlers.open(late) and not late.alive  # after shutdown: not started
