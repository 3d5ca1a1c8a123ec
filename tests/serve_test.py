"""The OpenAI-compatible server, live on 127.0.0.1, through the official client."""

import concurrent.futures
import contextlib
import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib

import httpx2 as httpx
import numpy as np
import openai
import pytest
import uvicorn

from marco_jax.engine import stops
from marco_jax.engine.engine import Engine, EngineConfig
from marco_jax.scoring import score
from marco_jax.search import runner
from marco_jax.search.config import load_job_config
from marco_jax.serve.app import ServerSettings, create_app
from marco_jax.serve import protocol
from marco_jax.serve.worker import ADMIT_WAIT_S, EngineWorker, ServeRequest, engine_stop_strings
from cli_test import ROOT

CONFIG = EngineConfig(slots=8, decode_steps=4, block_size=8, max_model_len=320,
                      kv_cache_gb=0.02, prefill_shapes=((8, 32), (1, 128)))
SEARCH_SET = ["template=chat", "search.iterations=3", "search.call_tokens=24",
              "search.max_tokens=48", "search.step_max_tokens=12"]


def search_config():
    return load_job_config("mcts-step", SEARCH_SET)


class LiveServer:
    """uvicorn in a thread on an ephemeral port, over a tiny model's engine."""

    def __init__(self, loaded, max_requests=256, name="tiny"):
        searches = {"mcts-step": search_config()}
        table = stops.build_stop_table(loaded.tokenizer, engine_stop_strings(searches.values()),
                                       loaded.cfg.vocab_size)
        self.engine = Engine(loaded.model, loaded.eos_ids, CONFIG, stop_table=table)
        self.idle_blocks = self.engine.blocks.available
        self.worker = EngineWorker(self.engine, loaded.tokenizer, loaded.eos_ids, max_requests)
        settings = ServerSettings(name, CONFIG.max_model_len, 5, searches, grace_s=2)
        config = uvicorn.Config(create_app(self.worker, settings), host="127.0.0.1", port=0,
                                log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def live(tiny):
    server = LiveServer(tiny)
    yield server
    server.stop()


def chat(live, content="Count to five.", **kwargs):
    return live.client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": content}], **kwargs)


def test_completion_and_chat_match_the_engine(live, tiny):
    out = live.client.completions.create(model="tiny", prompt="Once upon", max_tokens=12,
                                         temperature=0)
    ids = tiny.tokenizer.encode("Once upon", add_special_tokens=False)
    alone = Engine(tiny.model, tiny.eos_ids, CONFIG)
    [expected] = alone.generate([ids], 12)
    shown = [t for t in expected.tokens if t not in tiny.eos_ids]
    assert out.choices[0].text == tiny.tokenizer.decode(shown)
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == len(
        expected.tokens)
    reply = chat(live, max_tokens=10, temperature=0)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert [m.id for m in live.client.models.list().data] == ["tiny"]


def test_streamed_chunks_concatenate_to_the_whole_text(live):
    settings = dict(max_tokens=40, temperature=1.0, seed=11, top_p=0.9)
    whole = chat(live, **settings)
    chunks = list(chat(live, stream=True, stream_options={"include_usage": True}, **settings))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len(text) > 0
    assert sum(bool(c.choices) for c in chunks) > 2  # really streamed, not one piece
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    streamed = list(live.client.completions.create(model="tiny", prompt="abc", stream=True,
                                                   **settings))
    plain = live.client.completions.create(model="tiny", prompt="abc", **settings)
    assert "".join(c.choices[0].text for c in streamed) == plain.choices[0].text


def test_logprobs_equal_teacher_forced_scores(live, tiny):
    reply = chat(live, max_tokens=16, temperature=1.0, seed=3, logprobs=True, top_logprobs=5)
    content = reply.choices[0].logprobs.content
    prompt = tiny.tokenizer.encode(  # the server's rendering of the same messages
        "<|im_start|>user\nCount to five.<|im_end|>\n<|im_start|>assistant\n",
        add_special_tokens=False)
    [alone] = Engine(tiny.model, tiny.eos_ids, CONFIG).generate([prompt], 16, temperature=1.0,
                                                                seed=3)
    generated = alone.tokens
    assert [bytes(t.bytes) for t in content] == [live.worker.token_bytes[t] for t in generated]
    scores = score(tiny.model, prompt + generated, top_k=5)
    n = len(generated)
    np.testing.assert_allclose([t.logprob for t in content], scores.logprobs[-n:], atol=2e-4)
    for token, top_lp in zip(content, scores.top_logprobs[-n:]):
        np.testing.assert_allclose([t.logprob for t in token.top_logprobs], top_lp, atol=2e-4)
    legacy = live.client.completions.create(model="tiny", prompt="xyz", max_tokens=6,
                                            temperature=0, logprobs=3)
    block = legacy.choices[0].logprobs
    assert len(block.tokens) == 6 and all(len(top) <= 3 for top in block.top_logprobs)
    assert block.text_offset[0] == 0


def test_n_choices_seeds_and_stop(live):
    many = chat(live, n=3, max_tokens=20, temperature=1.0, seed=40)
    texts = [c.message.content for c in many.choices]
    assert [c.index for c in many.choices] == [0, 1, 2] and len(set(texts)) == 3
    assert chat(live, max_tokens=20, temperature=1.0, seed=41).choices[0].message.content \
        == texts[1]  # choice i uses seed + i
    again = chat(live, n=3, max_tokens=20, temperature=1.0, seed=40)
    assert [c.message.content for c in again.choices] == texts
    base = texts[0]
    stop = base[len(base) // 2:len(base) // 2 + 2]
    cut = chat(live, max_tokens=20, temperature=1.0, seed=40, stop=[stop, "never-there"])
    assert cut.choices[0].message.content == base[:base.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    solo = chat(live, max_tokens=20, temperature=1.0, seed=40)
    assert solo.choices[0].message.content == base
    assert cut.usage.completion_tokens < solo.usage.completion_tokens  # ended at the stop


def test_32_concurrent_requests_each_equal_their_solo_result(live):
    def ask(i):
        return chat(live, f"question {i}", max_tokens=8 + i % 5, temperature=1.0,
                    seed=100 + i).choices[0].message.content
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        together = list(pool.map(ask, range(32)))
    for i in (0, 13, 31):
        assert ask(i) == together[i]


def test_a_search_request_answers_like_the_search_job(live, tiny, tmp_path):
    question = "Tom has 3 apples and buys 4 more. How many apples?"
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"id": "q1", "question": question, "answer": "7"}) + "\n")
    output = tmp_path / "out.jsonl"
    config = search_config()
    runner.run_job(tiny, config, [{"id": "q1", "question": question, "answer": "7"}], output,
                   engine_config=CONFIG)
    expected = json.loads(output.read_text())
    reply = chat(live, question, seed=zlib.crc32(b"q1"),
                 extra_body={"marco": {"search": "mcts-step"}})
    marco = reply.model_extra["marco"]
    assert reply.choices[0].message.content == expected["text"]
    assert marco["answer"] == expected["chosen_answer"]
    assert [c["answer"] for c in marco["candidates"]] == expected["candidate_answers"]
    tree = httpx.get(f"{live.url}/v1/trees/{marco['tree_id']}").json()
    assert tree["nodes"][0]["parent"] == -1 and len(tree["nodes"]) == expected["tree"]["nodes"]
    chunks = list(chat(live, question, seed=zlib.crc32(b"q1"), stream=True,
                       extra_body={"marco": {"search": "mcts-step"}}))
    progress = [c.model_extra["marco"]["progress"] for c in chunks
                if not c.choices and "marco" in c.model_extra]
    assert [p["step"] for p in progress] == list(range(1, len(progress) + 1)) and progress
    assert progress[-1]["nodes"] == expected["tree"]["nodes"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) \
        == expected["text"]


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 9},
     "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x" * 400}]}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 300}, "max_tokens"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 0}, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]},
     "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "marco": {"search": "nope"}},
     "marco.search"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 129}, "n"),
    ({"messages": [{"role": "user", "content": "hi"}],
      "marco": {"search": "mcts-step", "max_total_tokens": 3}}, "marco.max_total_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}],
      "marco": {"search": "mcts-step", "max_total_tokens": "many"}}, "marco.max_total_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "marco": {"max_total_tokens": 99}},
     "marco.max_total_tokens"),
])
def test_bad_requests_get_400_naming_the_field(live, body, param):
    response = httpx.post(f"{live.url}/v1/chat/completions", json={"model": "tiny", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and param.split(".")[0] in error["message"]


def test_unknown_model_is_404_and_bad_json_is_400(live):
    response = httpx.post(f"{live.url}/v1/completions", json={"model": "gpt-9", "prompt": "a"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    response = httpx.post(f"{live.url}/v1/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        live.client.completions.create(model="tiny", prompt="a", max_tokens=0)


def test_a_client_that_disconnects_mid_stream_frees_its_slots(live):
    body = {"model": "tiny", "prompt": "a long story", "max_tokens": 250, "stream": True,
            "temperature": 1.0, "seed": 1}
    with httpx.stream("POST", f"{live.url}/v1/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first[5:])["choices"][0]["finish_reason"] is None
    deadline = time.time() + 30
    while time.time() < deadline and (live.engine.has_work
                                      or live.engine.blocks.available != live.idle_blocks):
        time.sleep(0.05)
    assert not live.engine.has_work and live.engine.blocks.available == live.idle_blocks
    assert live.worker.metrics.requests_cancelled >= 1


def test_health_metrics_and_a_full_server_gets_503(live, tiny):
    assert httpx.get(f"{live.url}/health").json() == {"status": "ok"}
    metrics = httpx.get(f"{live.url}/metrics").text
    assert "marco_requests_in_flight 0" in metrics
    assert "marco_generated_tokens_total" in metrics
    full = LiveServer(tiny, max_requests=0)  # every request is one too many
    try:
        response = httpx.post(f"{full.url}/v1/completions",
                              json={"model": "tiny", "prompt": "b", "max_tokens": 2})
        assert response.status_code == 503 and "in flight" in response.json()["error"]["message"]
    finally:
        full.stop()


def test_the_worker_refuses_requests_over_its_limit(tiny):
    engine = Engine(tiny.model, tiny.eos_ids, CONFIG)
    worker = EngineWorker(engine, tiny.tokenizer, tiny.eos_ids, max_requests=2)  # not started
    parsed = protocol.parse_completion({"model": "tiny", "prompt": "a"}, 5)
    reqs = [ServeRequest(parsed, [1, 2], 4, 0, lambda event: None) for _ in range(3)]
    assert [worker.submit(req) for req in reqs[:2]] == [0, 1]
    with pytest.raises(protocol.RequestError, match="2 requests in flight") as refused:
        worker.submit(reqs[2])
    assert refused.value.status == 503


def test_script_on_a_mesh_streams_the_one_device_text_and_sigterm_lets_it_finish(tiny):
    """``scripts/serve.py --mesh``: the engine sharded over the 8 simulated
    devices writes the single-device greedy text; SIGTERM mid-stream ends it cleanly."""
    ids = tiny.tokenizer.encode("a", add_special_tokens=False)
    [expected] = Engine(tiny.model, tiny.eos_ids, CONFIG).generate([ids], 200)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "serve.py"), "--model", "builtin:tiny",
         "--port", str(port), "--no-warmup", "--slots", "4", "--max-model-len", "256",
         "--grace-s", "20", "--mesh", "data=4,tensor=2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        health = []  # the port answers while the model loads: "starting" (503), then "ok"
        while time.time() < deadline:
            with contextlib.suppress(httpx.TransportError):
                response = httpx.get(f"{url}/health")
                health.append((response.status_code, response.json()["status"]))
                if response.status_code == 200:
                    break
            time.sleep(0.1)
        assert health[-1] == (200, "ok") and (503, "starting") in health
        assert set(health[:-1]) == {(503, "starting")}
        body = {"model": "builtin:tiny", "prompt": "a", "max_tokens": 200, "stream": True,
                "temperature": 0}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
            lines = response.iter_lines()
            first = json.loads(next(line for line in lines if line.startswith("data:"))[5:])
            first = first["choices"][0]["text"]
            server.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data:")]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][5:])["choices"][0]["finish_reason"] == "length"
        text = first + "".join(json.loads(line[5:])["choices"][0]["text"] for line in rest[:-1])
        assert text == tiny.tokenizer.decode([t for t in expected.tokens
                                              if t not in tiny.eos_ids])
        # uvicorn re-raises the signal once it has shut down cleanly
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        server.kill()
    log = server.stdout.read()
    assert "Application shutdown complete" in log and "Traceback" not in log
    assert "loading builtin:tiny" in log and f"serving 'builtin:tiny' on {url}" in log


def test_health_answers_while_a_huge_prompt_is_tokenized(live):
    """A 6 MB prompt takes seconds to tokenize; the event loop must not wait for it."""
    body = {"model": "tiny", "prompt": "x" * 6_000_000, "max_tokens": 4}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        big = pool.submit(httpx.post, f"{live.url}/v1/completions", json=body, timeout=120)
        time.sleep(1.0)  # the body is in; its prompt is being tokenized
        took = []
        with httpx.Client(base_url=live.url) as client:
            for _ in range(3):
                start = time.perf_counter()
                assert client.get("/health").status_code == 200
                took.append(time.perf_counter() - start)
        assert not big.done()  # still tokenizing while /health answered
        response = big.result()
    assert max(took) < 0.1, took
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"


def test_a_body_over_the_limit_gets_413_naming_it(live):
    body = {"model": "tiny", "prompt": "x" * (9 * 2 ** 20), "max_tokens": 4}
    response = httpx.post(f"{live.url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 413
    error = response.json()["error"]
    assert "8 MiB" in error["message"] and error["code"] == "request_too_large"


def test_the_running_gauge_drops_when_a_client_leaves(live):
    body = {"model": "tiny", "prompt": "gauge", "n": 4, "max_tokens": 250, "stream": True,
            "temperature": 1.0, "seed": 5}
    with httpx.stream("POST", f"{live.url}/v1/completions", json=body, timeout=120) as response:
        next(line for line in response.iter_lines() if line.startswith("data:"))
    deadline = time.time() + 30
    while time.time() < deadline and (live.worker.in_flight or live.engine.has_work):
        time.sleep(0.05)
    metrics = httpx.get(f"{live.url}/metrics").text
    assert "marco_requests_in_flight 0" in metrics
    assert "marco_engine_running_requests 0" in metrics
    assert "marco_engine_waiting_requests 0" in metrics


def test_search_max_tokens_cuts_the_answer_and_max_total_tokens_caps_the_search(live):
    """max_tokens bounds the returned answer's tokens (usage counts them); marco.max_total_tokens
    bounds all the search generates (marco.usage counts those)."""
    question = "Tom has 3 apples and buys 4 more. How many apples?"
    search = {"search": "mcts-step", "iterations": 2}

    def ask(marco, **kwargs):
        return chat(live, question, seed=7, extra_body={"marco": marco}, **kwargs)

    whole = ask(search)
    used = whole.model_extra["marco"]["usage"]["completion_tokens"]
    assert used == whole.model_extra["marco"]["generated_tokens"]
    assert 5 < whole.usage.completion_tokens < used  # the answer's path, not the whole tree
    cut = ask(search, max_tokens=5)
    assert cut.usage.completion_tokens == 5 and cut.choices[0].finish_reason == "length"
    assert whole.choices[0].message.content.startswith(
        cut.choices[0].message.content.rstrip("\ufffd"))
    capped = ask({**search, "max_total_tokens": 40})
    assert capped.model_extra["marco"]["usage"]["completion_tokens"] <= 40 < used
    assert capped.usage.completion_tokens <= 40


def test_script_refuses_a_port_in_use_before_loading():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "serve.py"), "--port", str(port),
             "--no-warmup"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and f"port {port}" in last and "--port" in last
    assert "loading" not in result.stderr


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_start_up_shows_how_far_compiling_has_got(monkeypatch, capsys):
    """A bar on a terminal; in a log, a line every eighth of the programs."""
    from marco_jax.commands import serve
    assert serve.ADMIT_WAIT_MS == ADMIT_WAIT_S * 1000  # --admit-wait-ms's default

    class Engine:
        def warmup(self, on_program):
            for done in range(1, 10):
                on_program(done, 9)
            return 9

    assert serve.warm_up(Engine()) == 9
    assert capsys.readouterr().err.splitlines() == [
        f"serve: compiled {n}/9 programs" for n in (2, 4, 6, 8, 9)]
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert serve.warm_up(Engine()) == 9
    assert "serve: compiling" in terminal.getvalue() and "9/9" in terminal.getvalue()
