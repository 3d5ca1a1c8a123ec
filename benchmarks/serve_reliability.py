"""The server under hostile load: a 10 MB body and a request at the ``n`` cap in flight,
/health timed and a normal request against its idle time, then 50 clients on top.

    python benchmarks/serve_reliability.py --model builtin:tiny \
        --json-out benchmarks/results/serve/reliability-tiny.json

Why (issue 34): one large or greedy request must not hold the server. The server runs
as users run it (``scripts/serve.py`` in its own process, warmed up). Phases:

1. idle: a normal request (8 greedy tokens) timed ``--repeats`` times;
2. load: a 10 MB prompt sent over and over (under ``--max-body-mb`` 16, so every one is
   read and tokenized, then refused as longer than the context) and one request with
   ``n`` at ``--max-n`` and ``--big-tokens`` tokens; meanwhile /health is timed every
   50 ms and the normal request is timed ``--repeats`` times;
3. crowd: the same load plus ``--clients`` concurrent normal requests.

Reported: /health latency (p50, p99, max) per phase, the slowest normal request under
load over the idle median (target <= 2: every one of them), and whether every crowd request got its answer and the server
still answers. Prints the JSON; exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import time

import httpx2
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
NORMAL = {"prompt": "Count to ten:", "max_tokens": 8, "temperature": 0}  # + "model"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--max-n", type=int, default=128)
    parser.add_argument("--decode-steps", type=int, help="the server's (default: its own)")
    parser.add_argument("--big-tokens", type=int, default=256, help="max_tokens of the n-cap request")
    parser.add_argument("--body-mb", type=float, default=10.0, help="0: no large body")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json-out", type=pathlib.Path)
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "scripts" / "serve.py"), "--model", args.model,
               "--port", str(port), "--slots", str(args.slots),
               "--max-model-len", str(args.max_model_len), "--max-n", str(args.max_n),
               "--max-body-mb", str(max(16.0, 1.5 * args.body_mb))]
    if args.decode_steps:
        command += ["--decode-steps", str(args.decode_steps)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


async def wait_ready(client: httpx2.AsyncClient, server: subprocess.Popen) -> None:
    while True:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read()[-2000:]}")
        try:
            if (await client.get("/health")).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        await asyncio.sleep(0.5)


async def timed(client: httpx2.AsyncClient, body: dict) -> tuple[float, int]:
    start = time.perf_counter()
    response = await client.post("/v1/completions", json=body)
    return time.perf_counter() - start, response.status_code


async def normal_times(client: httpx2.AsyncClient, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        seconds, status = await timed(client, NORMAL)
        if status != 200:
            raise SystemExit(f"a normal request got HTTP {status}")
        times.append(seconds)
    return times


async def health_probe(client: httpx2.AsyncClient, stop: asyncio.Event) -> list[float]:
    """/health latencies every 50 ms until ``stop``, on its own connection."""
    seen = []
    while not stop.is_set():
        start = time.perf_counter()
        await client.get("/health")
        seen.append(time.perf_counter() - start)
        await asyncio.sleep(0.05)
    return seen


async def large_bodies(client: httpx2.AsyncClient, body_mb: float, stop: asyncio.Event) -> list:
    """The 10 MB prompt, again and again until ``stop``: its answers' statuses."""
    body = {"model": NORMAL["model"], "prompt": "x " * int(body_mb * 2**20 / 2), "max_tokens": 4}
    statuses = []
    while body_mb and not stop.is_set():
        statuses.append((await client.post("/v1/completions", json=body)).status_code)
    return statuses


def summary(latencies: list[float]) -> dict:
    return {"count": len(latencies), "p50_ms": 1e3 * statistics.median(latencies),
            "p99_ms": 1e3 * float(np.percentile(latencies, 99)), "max_ms": 1e3 * max(latencies)}


async def loaded(args: argparse.Namespace, base: str, crowd: int) -> dict:
    """One phase under the large body and the n-cap request, with ``crowd`` clients."""
    stop = asyncio.Event()
    timeout = httpx2.Timeout(600.0)
    async with httpx2.AsyncClient(base_url=base, timeout=timeout) as health, \
            httpx2.AsyncClient(base_url=base, timeout=timeout) as heavy, \
            httpx2.AsyncClient(base_url=base, timeout=timeout) as normal, \
            httpx2.AsyncClient(base_url=base, timeout=timeout,
                               limits=httpx2.Limits(max_connections=crowd + 1)) as many:
        probe = asyncio.create_task(health_probe(health, stop))
        bodies = asyncio.create_task(large_bodies(heavy, args.body_mb, stop))
        big = asyncio.create_task(timed(heavy, {
            "model": NORMAL["model"], "prompt": "Tell a story:", "n": args.max_n, "max_tokens": args.big_tokens,
            "temperature": 1.0, "seed": 0}))
        await asyncio.sleep(1.0)  # both in flight
        crowd_tasks = [asyncio.create_task(timed(many, NORMAL)) for _ in range(crowd)]
        times = await normal_times(normal, args.repeats)
        crowd_results = await asyncio.gather(*crowd_tasks, return_exceptions=True)
        big_in_flight = not big.done()
        big_seconds, big_status = await big
        stop.set()
        latencies, statuses = await probe, await bodies
    answered = [r for r in crowd_results if not isinstance(r, BaseException) and r[1] == 200]
    return {"health": summary(latencies), "normal_seconds": times,
            "normal_median_s": statistics.median(times), "normal_max_s": max(times),
            "n_cap_request_in_flight_after_normal": big_in_flight,
            "n_cap_request_seconds": big_seconds, "n_cap_request_status": big_status,
            "large_bodies_sent": len(statuses), "large_body_statuses": sorted(set(statuses)),
            "crowd": crowd, "crowd_answered": len(answered),
            "crowd_errors": [repr(r) for r in crowd_results if r not in answered][:5]}


async def run(args: argparse.Namespace) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(args, port)
    try:
        async with httpx2.AsyncClient(base_url=base, timeout=600.0) as client:
            await wait_ready(client, server)
            NORMAL["model"] = (await client.get("/v1/models")).json()["data"][0]["id"]
            await normal_times(client, 2)  # first calls of each program
            idle = await normal_times(client, args.repeats)
        load = await loaded(args, base, 0)
        crowd = await loaded(args, base, args.clients)
        async with httpx2.AsyncClient(base_url=base, timeout=60.0) as client:
            alive = (await client.get("/health")).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=60)
    idle_median = statistics.median(idle)
    result = {
        "model": args.model, "slots": args.slots, "max_n": args.max_n,
        "big_tokens": args.big_tokens, "body_mb": args.body_mb, "cpu_count": os.cpu_count(),
        "idle_normal_seconds": idle, "idle_normal_median_s": idle_median,
        "load": load, "crowd": crowd, "server_alive_after": alive,
        "normal_under_load_over_idle": load["normal_max_s"] / idle_median,
        "normal_under_crowd_over_idle": crowd["normal_max_s"] / idle_median,
    }
    result["targets_met"] = (
        max(load["health"]["max_ms"], crowd["health"]["max_ms"]) < 100
        and result["normal_under_load_over_idle"] <= 2
        and crowd["crowd_answered"] == args.clients and alive)
    return result


def main() -> None:
    args = parse_args()
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=1)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    sys.exit(0 if result["targets_met"] else 1)


if __name__ == "__main__":
    main()
