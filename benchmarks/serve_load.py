"""The OpenAI-compatible server under concurrent clients, against the same requests offline.

    python benchmarks/serve_load.py --model HF_DIR --mgsm ../shared/data/mgsm/mgsm_en.tsv \
        --clients 1,8,32 --requests-per-client 2 --max-tokens 64 --slots 32 \
        --batch-job 64 --json-out benchmarks/results/serve_load.json

Why: a server only earns its place if HTTP, JSON, streaming and the handoff to
the engine thread cost little next to generation (issue 17: at 32 clients,
served tokens/s >= 0.85x offline). For each client count C, C x K MGSM-En
questions go as greedy streamed chat requests (``max_tokens``) from C
concurrent loopback clients to a server started in this process (uvicorn in
a thread, the engine thread behind it); then the same requests, rendered and
tokenized the same way, go straight to a second engine of the same size
(its own prefix cache, so neither side reuses the other's prompts), C at a
time as the clients keep them. Both engines compile everything at warm-up. Reported:
requests/s, output tokens/s, latency and time-to-first-token p50/p99 (served),
offline tokens/s, the ratio, and whether the texts are identical (greedy).

Issue 35 adds references: the 1-client requests through a one-slot engine of their
own (its wall time, prefill and per-token decode time: served 1-client latency
should be <= 1.3x it, time to first token <= its prefill + 2 decode steps); each
engine's compiled programs after warm-up and at the end (equal: nothing compiled
while serving); decode calls by bucket; and with ``--batch-job N``, the throughput
of N requests submitted at once to the offline engine with the 1-step first-token call,
then of N others without it (the same programs, the setting swapped between the runs).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import pathlib
import sys
import threading
import time

import httpx2
import numpy as np
import uvicorn

from report import report

from marco_jax import prompts as prompt_lib
from marco_jax.cli import enable_compilation_cache
from marco_jax.engine.engine import Engine, EngineConfig
from marco_jax.loading import load
from marco_jax.search.problems import read_problems
from marco_jax.serve.app import ServerSettings, create_app, freeze_heap
from marco_jax.serve.worker import ADMIT_WAIT_S, EngineWorker


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--mgsm", type=pathlib.Path, required=True)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--time-limit", type=float, default=1800,
                        help="stop starting client counts after this many seconds")
    parser.add_argument("--admit-wait-ms", type=float, default=ADMIT_WAIT_S * 1000,
                        help="the server's wait for more requests when one finds it idle")
    parser.add_argument("--batch-job", type=int, default=0,
                        help="then N fresh questions at once through the offline engine "
                             "with the first-token step, and N others without (0: skip)")
    parser.add_argument("--json-out", type=pathlib.Path)
    return parser.parse_args()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def one_request(client: httpx2.AsyncClient, question: str, max_tokens: int) -> dict:
    body = {"model": "served", "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, text, tokens = None, [], 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk["choices"]:
                if choice["delta"].get("content"):
                    first = first or time.perf_counter()
                    text.append(choice["delta"]["content"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {"latency": end - start, "ttft": (first or end) - start, "tokens": tokens,
            "text": "".join(text)}


async def served(url: str, questions: list[str], clients: int, max_tokens: int) -> dict:
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for item in enumerate(questions):
        queue.put_nowait(item)
    results: dict[int, dict] = {}

    async def client_loop(client: httpx2.AsyncClient) -> None:
        while not queue.empty():
            index, question = queue.get_nowait()
            results[index] = await one_request(client, question, max_tokens)

    limits = httpx2.Limits(max_connections=clients + 4)
    async with httpx2.AsyncClient(base_url=url, timeout=3600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - start
    ordered = [results[i] for i in range(len(questions))]
    tokens = sum(r["tokens"] for r in ordered)
    latency = [r["latency"] for r in ordered]
    ttft = [r["ttft"] for r in ordered]
    return {"wall_s": round(wall, 2), "requests": len(ordered), "output_tokens": tokens,
            "requests_per_s": round(len(ordered) / wall, 3),
            "output_tokens_per_s": round(tokens / wall, 2),
            "latency_p50_s": round(percentile(latency, 50), 2),
            "latency_p99_s": round(percentile(latency, 99), 2),
            "ttft_p50_s": round(percentile(ttft, 50), 2),
            "ttft_p99_s": round(percentile(ttft, 99), 2),
            "latency_s": [round(x, 3) for x in latency], "ttft_s": [round(x, 3) for x in ttft],
            "texts": [r["text"] for r in ordered]}


def calls(engine: Engine) -> dict:
    """The engine's prefill and decode calls so far (a side that starts requests
    a call apart makes more of them for the same tokens), and its decode calls by
    bucket (the rows of the program that ran)."""
    return {"prefill": engine.stats.prefill_calls, "decode": engine.stats.decode_calls,
            "decode_by_bucket": dict(engine.stats.bucket_calls)}


def since(before: dict, after: dict) -> dict:
    return {k: since(before[k], v) if isinstance(v, dict) else v - before.get(k, 0)
            for k, v in after.items() if v != before.get(k, 0)}


def one_slot(engine: Engine, prompt: list[int], max_tokens: int) -> dict:
    """One request alone in a one-slot engine: its wall time, prefill time and
    decode time per token (the reference for one client's latency and first token)."""
    stats = dataclasses.replace(engine.stats)
    start = time.perf_counter()
    [done] = engine.generate([prompt], max_tokens)
    wall = time.perf_counter() - start
    prefill = engine.stats.prefill_s - stats.prefill_s
    decode = engine.stats.decode_s - stats.decode_s
    step = decode / len(done.tokens)
    return {"wall_s": round(wall, 3), "prefill_s": round(prefill, 3),
            "decode_s": round(decode, 3), "tokens": len(done.tokens),
            "step_s": round(step, 4), "prefill_plus_2_steps_s": round(prefill + 2 * step, 3)}


def batch_job(engine: Engine, sets: list[list[list[int]]], max_tokens: int) -> dict:
    """Each set of prompts at once, the first with the first-token step on, the second
    with it off (the same programs: the setting only chooses a call's step count; two
    sets of the same size, so that neither finds the other's prompts in the cache)."""
    config, result = engine.config, {}
    for on, ids in zip((True, False), sets):
        engine.config = dataclasses.replace(config, first_token_step=on)
        before = calls(engine)
        start = time.perf_counter()
        done = engine.generate(ids, max_tokens)
        wall = time.perf_counter() - start
        tokens = sum(len(c.tokens) for c in done)
        result["first_token_step" if on else "fixed_steps"] = {
            "wall_s": round(wall, 2), "output_tokens": tokens,
            "output_tokens_per_s": round(tokens / wall, 2),
            "engine_calls": since(before, calls(engine))}
    engine.config = config
    result["on_over_off"] = round(result["first_token_step"]["output_tokens_per_s"]
                                  / result["fixed_steps"]["output_tokens_per_s"], 3)
    return result


def offline(engine: Engine, ids: list[list[int]], max_tokens: int, concurrency: int) -> list:
    """The requests through the engine directly, at most ``concurrency`` in flight
    (a new one as each finishes), as the clients keep them; in input order."""
    done, ids_left, owner = {}, list(enumerate(ids)), {}
    while ids_left or engine.has_work:
        while ids_left and len(owner) - len(done) < concurrency:
            index, prompt = ids_left.pop(0)
            owner[engine.submit(prompt, max_tokens)] = index
        for completion in engine.step():
            done[owner[completion.request_id]] = completion
    return [done[i] for i in range(len(ids))]


def main() -> None:
    args = parse_args()
    enable_compilation_cache()
    loaded = load(args.model)
    tokenizer = loaded.tokenizer
    config = EngineConfig(slots=args.slots, max_model_len=args.max_model_len)
    counts = [int(c) for c in args.clients.split(",")]
    questions = [p["question"] for p in read_problems(args.mgsm)]
    server_engine = Engine(loaded.model, loaded.eos_ids, config)
    offline_engine = Engine(loaded.model, loaded.eos_ids, config)
    alone_engine = Engine(loaded.model, loaded.eos_ids, dataclasses.replace(config, slots=1))
    engines = {"server": server_engine, "offline": offline_engine, "one_slot": alone_engine}
    compile_start = time.perf_counter()
    warm = {name: engine.warmup() for name, engine in engines.items()}
    programs = warm["server"] + warm["offline"]
    compile_s = time.perf_counter() - compile_start
    print(f"warm-up: {warm} programs, {compile_s:.0f} s", file=sys.stderr)
    worker = EngineWorker(server_engine, tokenizer, loaded.eos_ids,
                          admit_wait_s=args.admit_wait_ms / 1000)
    settings = ServerSettings("served", config.max_model_len, config.top_logprobs, {})
    server = uvicorn.Server(uvicorn.Config(create_app(worker, settings), host="127.0.0.1",
                                           port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    freeze_heap()  # as scripts/serve.py does once it is ready
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    runs, begun, used = [], time.perf_counter(), 0
    for clients in counts:
        if time.perf_counter() - begun > args.time_limit:
            print(f"time limit: skipping {clients} clients", file=sys.stderr)
            continue
        batch = questions[used:used + clients * args.requests_per_client]
        used += len(batch)  # fresh questions per client count: no prefix-cache reuse
        before = calls(server_engine)
        side = asyncio.run(served(url, batch, clients, args.max_tokens))
        side["engine_calls"] = since(before, calls(server_engine))
        before = calls(offline_engine)
        ids = [tokenizer.encode(prompt_lib.chatml([{"role": "user", "content": q}]),
                                add_special_tokens=False) for q in batch]
        start = time.perf_counter()
        done = offline(offline_engine, ids, args.max_tokens, clients)
        offline_wall = time.perf_counter() - start
        offline_tokens = sum(len(c.tokens) for c in done)
        offline_texts = [tokenizer.decode([t for t in c.tokens if t not in loaded.eos_ids])
                         for c in done]
        texts = side.pop("texts")
        offline_rate = offline_tokens / offline_wall
        if clients == 1:  # the references: each request alone in a one-slot engine
            alone = [one_slot(alone_engine, prompt, args.max_tokens) for prompt in ids]
            wall = float(np.mean([a["wall_s"] for a in alone]))
            ttft = float(np.mean([a["prefill_plus_2_steps_s"] for a in alone]))
            side["one_slot"] = alone
            side["latency_over_one_slot"] = round(side["latency_p50_s"] / wall, 3)
            side["ttft_over_prefill_plus_2_steps"] = round(side["ttft_p50_s"] / ttft, 3)
            side["per_request"] = [  # each request against its own reference
                {"latency_over_one_slot": round(lat / a["wall_s"], 3),
                 "ttft_over_prefill_plus_2_steps": round(t / a["prefill_plus_2_steps_s"], 3)}
                for lat, t, a in zip(side["latency_s"], side["ttft_s"], alone)]
        runs.append({"clients": clients, "served": side,
                     "offline": {"wall_s": round(offline_wall, 2),
                                 "output_tokens": offline_tokens,
                                 "output_tokens_per_s": round(offline_rate, 2),
                                 "engine_calls": since(before, calls(offline_engine))},
                     "served_over_offline": round(side["output_tokens_per_s"] / offline_rate, 3),
                     "identical_texts": sum(a == b for a, b in zip(texts, offline_texts))})
        print(json.dumps(runs[-1]), file=sys.stderr)
    server.should_exit = True
    thread.join(timeout=60)
    batch = None
    if args.batch_job:
        n = args.batch_job
        sets = [[tokenizer.encode(prompt_lib.chatml([{"role": "user", "content": q}]),
                                  add_special_tokens=False) for q in questions[start:start + n]]
                for start in (used, used + n)]
        batch = {"requests": n, **batch_job(offline_engine, sets, args.max_tokens)}
        print(json.dumps(batch), file=sys.stderr)
    report({"date": datetime.date.today().isoformat(), "model": args.model,
            "slots": args.slots, "admit_wait_ms": args.admit_wait_ms,
            "max_tokens": args.max_tokens, "requests_per_client": args.requests_per_client,
            "decode_steps": config.decode_steps, "decode_buckets": server_engine.buckets,
            "warmup_programs": programs, "warmup_compile_s": round(compile_s, 1),
            "programs_after_warmup": warm,
            "programs_at_end": {name: e.num_programs for name, e in engines.items()},
            "runs": runs, "batch_job": batch},
           args.json_out)


if __name__ == "__main__":
    main()
