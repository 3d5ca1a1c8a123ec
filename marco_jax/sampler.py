"""Batched prefill + decode under one jit, returning per-step log-probabilities.

A batch of unequal token prefixes is left-padded into fixed-shape buckets
(batch size, prompt length, new tokens), so a search that continues many tree
nodes at once reuses a handful of compiled programs. Each step reports the
chosen token's log-probability and the top-k log-probabilities of the
*untempered* distribution (temperature only changes which token is drawn),
plus the Marco-o1 confidence ``c = exp(p(t)) / sum_k exp(p(t_k))``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from marco_jax.errors import MarcoError
from marco_jax.model import KVCache, Qwen2, positions_from_mask
from marco_jax.scoring import token_and_top_logprobs

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LENGTH_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclasses.dataclass
class Generation:
    """Per-row results; arrays are (rows, new_tokens[, k]), valid up to ``lengths``."""

    tokens: np.ndarray
    logprobs: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray
    lengths: np.ndarray  # generated tokens per row: also the n of the confidence mean
    finished_by_eos: np.ndarray
    confidence_sum: np.ndarray  # sum of c_i over each row's generated tokens


def bucket(n: int, buckets: tuple[int, ...], what: str) -> int:
    for size in buckets:
        if n <= size:
            return size
    raise MarcoError(f"{what} {n} exceeds the largest bucket {buckets[-1]}")


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _generate(graphdef: nnx.GraphDef, state: nnx.State, tokens_bp: jax.Array,
              mask_bp: jax.Array, eos_ids: jax.Array, new_tokens: int, top_k: int,
              temperature: jax.Array, max_new_b: jax.Array, rng: jax.Array):
    model = nnx.merge(graphdef, state)
    b, p = tokens_bp.shape
    cache = KVCache.zeros(model.cfg, b, p + new_tokens)
    positions_bp = positions_from_mask(mask_bp)
    logits_bpv, cache = model(tokens_bp, positions_bp, mask_bp, cache)

    def step(carry, key):
        logits_bv, cache, position_b, done_b, count_b = carry
        greedy_b = jnp.argmax(logits_bv, axis=-1)
        drawn_b = jax.random.categorical(key, logits_bv / jnp.maximum(temperature, 1e-6))
        token_b = jnp.where(temperature > 0, drawn_b, greedy_b)
        token_lp_b, top_lp_bk, top_ids_bk = token_and_top_logprobs(logits_bv, token_b, top_k)
        confidence_b = jnp.exp(token_lp_b) / jnp.exp(top_lp_bk).sum(-1)
        live_b = ~done_b
        count_b = count_b + live_b
        done_b = done_b | jnp.isin(token_b, eos_ids) | (count_b >= max_new_b)
        logits_b1v, cache = model(token_b[:, None], position_b[:, None], live_b[:, None], cache)
        out = (token_b, token_lp_b, top_ids_bk, top_lp_bk, confidence_b, live_b)
        return (logits_b1v[:, 0], cache, position_b + 1, done_b, count_b), out

    carry = (logits_bpv[:, -1], cache, positions_bp[:, -1] + 1, jnp.zeros(b, bool),
             jnp.zeros(b, jnp.int32))
    keys = jax.random.split(rng, new_tokens)
    (_, _, _, _, count_b), outs = jax.lax.scan(step, carry, keys)
    tokens, token_lp, top_ids, top_lp, confidence, live = (jnp.moveaxis(o, 0, 1) for o in outs)
    return tokens, token_lp, top_ids, top_lp, (confidence * live).sum(-1), count_b


class Sampler:
    """Generates from token prefixes; caches one compiled program per bucket."""

    def __init__(self, model: Qwen2, eos_ids: tuple[int, ...], top_k: int = 5):
        if not eos_ids:
            raise MarcoError("the sampler needs at least one EOS token id")
        self.graphdef, self.state = nnx.split(model)
        self.eos_ids = jnp.asarray(eos_ids, jnp.int32)
        self.top_k = top_k

    @property
    def num_compilations(self) -> int:
        return _generate._cache_size()

    def generate(self, prompts: list[list[int]], max_new_tokens: int,
                 temperature: float = 0.0, seed: int = 0) -> Generation:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise MarcoError("every prompt needs at least one token")
        if max_new_tokens < 1:
            raise MarcoError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0:
            raise MarcoError(f"temperature must be >= 0, got {temperature}")
        rows = len(prompts)
        b = bucket(rows, BATCH_BUCKETS, "batch size")
        p = bucket(max(len(x) for x in prompts), LENGTH_BUCKETS, "prompt length")
        n = bucket(max_new_tokens, LENGTH_BUCKETS, "max_new_tokens")
        tokens = np.zeros((b, p), np.int32)
        mask = np.zeros((b, p), bool)
        for i, prompt in enumerate(prompts):
            tokens[i, p - len(prompt):] = prompt
            mask[i, p - len(prompt):] = True
        mask[rows:, -1] = True  # filler rows: one token, so nothing is all-padding
        out = jax.device_get(_generate(
            self.graphdef, self.state, jnp.asarray(tokens), jnp.asarray(mask), self.eos_ids,
            n, self.top_k, jnp.float32(temperature), jnp.full(b, max_new_tokens, jnp.int32),
            jax.random.key(seed)))
        gen_tokens, token_lp, top_ids, top_lp, conf_sum, count = (np.asarray(x)[:rows] for x in out)
        finished_by_eos = np.isin(gen_tokens[np.arange(rows), count - 1], np.asarray(self.eos_ids))
        return Generation(gen_tokens[:, :max_new_tokens], token_lp[:, :max_new_tokens],
                          top_ids[:, :max_new_tokens], top_lp[:, :max_new_tokens], count,
                          finished_by_eos, conf_sum)
