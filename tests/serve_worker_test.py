"""The server's engine thread (``EngineWorker``) without HTTP, and its helpers."""

import threading
import time

import pytest

from marco_jax.engine.engine import Engine, EngineConfig
from marco_jax.loading import load
from marco_jax.serve import protocol
from marco_jax.serve.worker import (KEPT_TREES, EngineWorker, LiveTree, ServeRequest,
                                    decoding_once)

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


@pytest.fixture(scope="module")
def alone() -> int:
    """The decode calls of one 8-token request alone (two 4-token calls, and a first-token
    call where the engine makes one): what requests that share every call take."""
    return run_requests(0.0, 1, 0.0, timeout_s=120)


@pytest.mark.parametrize("admit_wait_s, late", [(2.0, 0), (0.0, 1)])
def test_requests_arriving_at_an_idle_engine_share_its_first_step(alone, admit_wait_s, late):
    """Two 8-token requests 0.3 s apart: gathered, they take one request's decode calls
    together; started at once, the second joins a call late."""
    assert run_requests(admit_wait_s, 2, 0.3, timeout_s=120) == alone + late


def test_the_gather_ends_when_the_slots_are_spoken_for(alone):
    """A minute's quiet gap would stall these four; the fourth fills the slots."""
    assert run_requests(60.0, CONFIG.slots, 0.2, timeout_s=30) == alone


def started_worker(tiny) -> EngineWorker:
    worker = EngineWorker(Engine(tiny.model, tiny.eos_ids, CONFIG), tiny.tokenizer, tiny.eos_ids,
                          admit_wait_s=0)
    worker.start()
    return worker


def test_a_small_request_does_not_wait_for_all_of_a_large_ones_choices():
    """16 choices of 32 tokens over 4 slots, then a 4-token request: served round-robin by
    request, the small one runs in the first wave instead of after 12 of the large one's."""
    tiny = load("builtin:tiny")
    worker = EngineWorker(Engine(tiny.model, tiny.eos_ids, CONFIG), tiny.tokenizer, tiny.eos_ids)
    order: list[tuple[str, str, str | None]] = []
    done = threading.Semaphore(0)

    def emit_for(name):
        def emit(event):
            order.append((name, event.kind, event.finish))
            if event.kind in ("done", "error"):
                done.release()
        return emit

    for name, n, max_tokens in (("large", 16, 32), ("small", 1, 4)):
        parsed = protocol.parse_completion({"model": "tiny", "prompt": "a", "n": n,
                                            "max_tokens": max_tokens, "temperature": 1.0}, 5)
        worker.submit(ServeRequest(parsed, [1, 2, 3], max_tokens, 0, emit_for(name)))
    worker.start()  # both are queued: the engine thread begins them together
    assert done.acquire(timeout=120) and done.acquire(timeout=120)
    worker.close(grace_s=1)
    small_done = order.index(("small", "done", None))
    large_finished = sum(1 for name, kind, finish in order[:small_done]
                         if name == "large" and finish is not None)
    assert ("small", "error", None) not in order and large_finished < CONFIG.slots


def test_a_request_arriving_while_another_holds_every_slot_finds_one():
    """A request with as many choices as there are slots leaves one free (the engine does
    not preempt): a small request sent while it runs finishes before any of its choices."""
    tiny = load("builtin:tiny")
    worker = started_worker(tiny)
    order: list[tuple[str, str, str | None]] = []
    begun, done = threading.Event(), threading.Semaphore(0)

    def emit_for(name):
        def emit(event):
            order.append((name, event.kind, event.finish))
            begun.set()
            if event.kind in ("done", "error"):
                done.release()
        return emit

    def send(name, n, max_tokens):
        parsed = protocol.parse_completion({"model": "tiny", "prompt": "a", "n": n,
                                            "max_tokens": max_tokens, "temperature": 0}, 5)
        worker.submit(ServeRequest(parsed, [1, 2, 3], max_tokens, 0, emit_for(name)))

    send("large", CONFIG.slots, 96)
    assert begun.wait(timeout=120)
    send("small", 1, 4)
    assert done.acquire(timeout=120) and done.acquire(timeout=120)
    worker.close(grace_s=1)
    small_done = order.index(("small", "done", None))
    assert not any(name == "large" and finish is not None for name, _, finish in order[:small_done])


def test_close_answers_queued_requests_with_503():
    """A request still in the queue when the grace period ends is told so (503), as is the
    running one; none is left without an answer."""
    tiny = load("builtin:tiny")
    worker = started_worker(tiny)
    step = worker.engine.step
    worker.engine.step = lambda: time.sleep(0.3) or step()  # a slow engine: the queue fills
    answers: dict[int, int] = {}
    answered = threading.Semaphore(0)

    def emit_for(index):
        def emit(event):
            if event.kind == "error":
                answers[index] = event.error.status
                answered.release()
        return emit

    parsed = protocol.parse_completion({"model": "tiny", "prompt": "a", "max_tokens": 100}, 5)
    worker.submit(ServeRequest(parsed, [1, 2, 3], 100, 0, emit_for(0)))
    deadline = time.time() + 30
    while worker.metrics.requests_started < 1 and time.time() < deadline:
        time.sleep(0.01)
    worker.submit(ServeRequest(parsed, [4, 5, 6], 100, 0, emit_for(1)))  # queued behind a step
    worker.close(grace_s=0)
    assert answered.acquire(timeout=30) and answered.acquire(timeout=30)
    assert answers == {0: 503, 1: 503} and not worker.alive


def test_special_tokens_are_counted_but_never_shown():
    """<|endoftext|> is not the built-in model's EOS, yet no client should see it."""
    tiny = load("builtin:tiny")
    worker = EngineWorker(Engine(tiny.model, tiny.eos_ids, CONFIG), tiny.tokenizer, tiny.eos_ids)
    ids = tiny.tokenizer.encode("hi<|endoftext|>!<|im_start|>", add_special_tokens=False)
    assert tiny.tokenizer.convert_tokens_to_ids("<|endoftext|>") not in tiny.eos_ids
    text = worker.choice_text()
    text.feed(ids)
    assert text.release(final=True) == "hi!" and text.tokens == len(ids)
    assert worker.decode(ids) == "hi!"  # a search's texts


def test_kept_trees_are_read_while_the_engine_thread_writes_them():
    """The app's threads read trees as the engine thread adds (and drops) them."""
    tiny = load("builtin:tiny")
    worker = EngineWorker(Engine(tiny.model, tiny.eos_ids, CONFIG), tiny.tokenizer, tiny.eos_ids)
    count = 4 * KEPT_TREES
    writer = threading.Thread(target=lambda: [
        worker._keep_tree(LiveTree(f"tree-{i}", None, worker.decode, worker.token_text)) for i in range(count)])
    writer.start()
    while writer.is_alive():
        worker.tree(f"tree-{count // 2}")
    writer.join()
    assert worker.tree("tree-0") is None and worker.tree(f"tree-{count - 1}") is not None
