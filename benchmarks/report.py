"""Shared output for benchmark scripts: print the results and optionally save them."""

from __future__ import annotations

import json
import pathlib
import time


def report(results: dict, json_out: pathlib.Path | None) -> None:
    """Print ``results`` as JSON; also write them to ``json_out`` when given."""
    text = json.dumps(results, indent=2)
    print(text)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text)


def machine_peaks() -> dict:
    """Best fp32 matmul FLOP/s and streaming-read bandwidth on this machine (JAX)."""
    import jax
    import jax.numpy as jnp
    a = jnp.ones((2048, 896), jnp.float32)
    b = jnp.ones((896, 4864), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    big = jnp.ones((2**28,), jnp.float32)  # 1 GiB
    total = jax.jit(jnp.sum)
    best_mm = best_bw = 0.0
    for _ in range(5):
        matmul(a, b).block_until_ready()
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best_mm = max(best_mm, 2 * 2048 * 896 * 4864 / (time.perf_counter() - start))
        total(big).block_until_ready()
        start = time.perf_counter()
        total(big).block_until_ready()
        best_bw = max(best_bw, big.nbytes / (time.perf_counter() - start))
    return {"matmul_gflops": best_mm / 1e9, "read_gb_per_s": best_bw / 1e9}
