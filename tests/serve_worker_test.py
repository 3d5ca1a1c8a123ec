"""The server's engine thread (``EngineWorker``) without HTTP, and its helpers."""

import threading
import time

import pytest

from marco_jax.engine.engine import Engine, EngineConfig
from marco_jax.loading import load
from marco_jax.serve import protocol
from marco_jax.serve.worker import EngineWorker, ServeRequest, decoding_once

CONFIG = EngineConfig(slots=4, decode_steps=4, block_size=8, max_model_len=128,
                      kv_cache_gb=0.01, prefill_shapes=((4, 16),))


def test_decoding_once_decodes_each_text_once_across_snapshots():
    calls = []

    def decode(tokens: list[int]) -> str:
        calls.append(tokens)
        return "-".join(map(str, tokens))

    decode_once = decoding_once(decode)
    tree = [[1, 2], [3], []]
    first = [decode_once(t) for t in tree]
    tree.append([4, 5])  # the tree grows by one node between snapshots
    second = [decode_once(t) for t in tree]
    assert first == ["1-2", "3", ""]
    assert second == first + ["4-5"]
    assert calls == [[1, 2], [3], [], [4, 5]]


def run_requests(admit_wait_s: float, count: int, apart_s: float, timeout_s: float) -> int:
    """``count`` 8-token requests ``apart_s`` apart through a started worker; its
    engine's decode calls once all are done (or a failure after ``timeout_s``)."""
    tiny = load("builtin:tiny")
    worker = EngineWorker(Engine(tiny.model, tiny.eos_ids, CONFIG), tiny.tokenizer,
                          tiny.eos_ids, admit_wait_s=admit_wait_s)
    worker.start()
    done = threading.Semaphore(0)
    parsed = protocol.parse_completion({"model": "tiny", "prompt": "a", "max_tokens": 8,
                                        "temperature": 0}, 5)
    emit = lambda event: event.kind == "done" and done.release()  # noqa: E731
    for i in range(count):
        if i:
            time.sleep(apart_s)
        worker.submit(ServeRequest(parsed, [1 + i, 2, 3], 8, 0, emit))
    assert all(done.acquire(timeout=timeout_s) for _ in range(count))
    worker.close(grace_s=1)
    return worker.engine.stats.decode_calls


@pytest.mark.parametrize("admit_wait_s, decode_calls", [(2.0, 2), (0.0, 3)])
def test_requests_arriving_at_an_idle_engine_share_its_first_step(admit_wait_s, decode_calls):
    """Two 8-token requests 0.3 s apart: gathered, they take two 4-token decode
    calls together; started at once, the second joins a call late."""
    assert run_requests(admit_wait_s, 2, 0.3, timeout_s=120) == decode_calls


def test_the_gather_ends_when_the_slots_are_spoken_for():
    """A minute's quiet gap would stall these four; the fourth fills the slots."""
    assert run_requests(60.0, CONFIG.slots, 0.2, timeout_s=30) == 2
