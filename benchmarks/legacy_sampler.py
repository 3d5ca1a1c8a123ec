"""Batched generation: one jitted prefill, one jitted decode loop, fixed-shape buckets.

A batch of unequal token prefixes is left-padded into buckets (batch size,
prompt length, new tokens), so a search that continues many tree nodes at once
reuses a handful of compiled programs (``Sampler.num_compilations``).

Each step reports the chosen token's log-probability and the top-k
log-probabilities of the *untempered* model distribution (temperature, top-k
and top-p only change which token is drawn), and accumulates the Marco-o1
confidence ``c = exp(p(t)) / sum_k exp(p(t_k))`` over the top-k on device.
Rows stop on an EOS id, a stop string or their own token budget; the loop
ends as soon as every row has stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from marco_jax import sampling, stops
from marco_jax.errors import MarcoError
from marco_jax.model import KVCache, Qwen2, positions_from_mask
from marco_jax.scoring import token_and_top_logprobs
from marco_jax.sharding import ShardingRules, shard_state

# Powers of two and 1.5x between them: a batch (from 16 rows) or a prompt pads
# by at most a third; padded rows cost as much as real ones.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64)
LENGTH_BUCKETS = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
FILTER_WIDTH = 256  # candidates for top-k / top-p thresholds (see sampling.py)
RUNNING, LENGTH, EOS, STOP = -1, 0, 1, 2
FINISH_REASONS = {LENGTH: "length", EOS: "eos", STOP: "stop"}
Layout = tuple[Mesh, ShardingRules] | None


@dataclasses.dataclass
class Timing:
    compile_s: float  # building programs for new buckets (0 when all were cached)
    prefill_s: float
    decode_s: float
    prompt_tokens: int
    generated_tokens: int

    @property
    def decode_tokens_per_s(self) -> float:
        return self.generated_tokens / self.decode_s if self.decode_s else 0.0


@dataclasses.dataclass
class Generation:
    """Per-row results; arrays are (rows, max_new_tokens[, k]), valid up to ``lengths``."""

    tokens: np.ndarray
    logprobs: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray
    confidences: np.ndarray  # c_i of each generated token, computed on device
    lengths: np.ndarray  # generated tokens per row: also the n of the confidence mean
    finish_reasons: list[str]  # "eos", "stop" (a stop string) or "length"
    confidence_sum: np.ndarray  # sum of c_i over each row's generated tokens
    timing: Timing

    def row_tokens(self, i: int) -> list[int]:
        return self.tokens[i, :self.lengths[i]].tolist()

    @property
    def confidence(self) -> np.ndarray:
        """Marco-o1's rollout value v = mean_i c_i, per row."""
        return self.confidence_sum / np.maximum(self.lengths, 1)


def bucket(n: int, buckets: tuple[int, ...], what: str) -> int:
    for size in buckets:
        if n <= size:
            return size
    raise MarcoError(f"{what} {n} exceeds the largest bucket {buckets[-1]}")


def _constrain_cache(cache: KVCache, layout: Layout) -> KVCache:
    if layout is None:
        return cache
    mesh, rules = layout
    kv = rules.sharding(("layers", "batch", "length", "kv_heads", "head_dim"),
                        cache.k_lbskh.shape, mesh)
    valid = rules.sharding(("batch", "length"), cache.valid_bs.shape, mesh)
    constrain = jax.lax.with_sharding_constraint
    return dataclasses.replace(cache, k_lbskh=constrain(cache.k_lbskh, kv),
                               v_lbskh=constrain(cache.v_lbskh, kv),
                               valid_bs=constrain(cache.valid_bs, valid))


def _prefill(graphdef: nnx.GraphDef, state: nnx.State, tokens_bp: jax.Array,
             mask_bp: jax.Array, *, new_tokens: int, layout: Layout):
    """Run the prompts into a fresh cache sized for ``new_tokens`` more; the head
    only at the last position."""
    model = nnx.merge(graphdef, state)
    b, p = tokens_bp.shape
    cache = _constrain_cache(KVCache.zeros(model.cfg, b, p + new_tokens), layout)
    positions_bp = positions_from_mask(mask_bp)
    x_bpd, cache = model.hidden_states(tokens_bp, positions_bp, mask_bp, cache)
    return model.logits(x_bpd[:, -1:])[:, 0], _constrain_cache(cache, layout), positions_bp[:, -1] + 1


def _decode(graphdef: nnx.GraphDef, state: nnx.State, cache: KVCache, logits_bv: jax.Array,
            position_b: jax.Array, eos_ids: jax.Array, stop_sjv: jax.Array,
            stop_lengths_s: jax.Array, temperature_b: jax.Array, top_k_b: jax.Array,
            top_p_b: jax.Array, seed_b: jax.Array, max_new_b: jax.Array, *,
            new_tokens: int, top_logprobs: int, width: int, layout: Layout):
    """Pick, record and feed back tokens until every row stops or the bucket is full."""
    model = nnx.merge(graphdef, state)
    b = logits_bv.shape[0]

    def pick(carry, logits_bv):
        step, out, reason_b, count_b, conf_b, stop_bs = (
            carry["step"], carry["out"], carry["reason"], carry["count"], carry["conf"],
            carry["stop"])
        token_b = sampling.next_tokens(logits_bv, temperature_b, top_k_b, top_p_b, seed_b,
                                       step, width)
        token_lp_b, top_lp_bk, top_ids_bk = token_and_top_logprobs(logits_bv, token_b,
                                                                   top_logprobs)
        live_b = reason_b == RUNNING
        count_b = count_b + live_b
        c_b = jnp.exp(token_lp_b) / jnp.exp(top_lp_bk).sum(-1)
        conf_b = conf_b + jnp.where(live_b, c_b, 0.0)
        stop_bs, hit_b = stops.advance(stop_sjv, stop_lengths_s, stop_bs, token_b,
                                         jnp.ones_like(stop_bs, bool))
        ended_b = jnp.where(jnp.isin(token_b, eos_ids), EOS,
                            jnp.where(hit_b, STOP, jnp.where(count_b >= max_new_b, LENGTH,
                                                             RUNNING)))
        out = jax.tree.map(lambda buf, x: buf.at[:, step].set(x), out,
                           (token_b, token_lp_b, top_ids_bk, top_lp_bk, c_b))
        return dict(step=step + 1, out=out, reason=jnp.where(live_b, ended_b, reason_b),
                    count=count_b, conf=conf_b, stop=stop_bs, token=token_b)

    def feed(loop):
        carry, cache, position_b = loop
        live_b = carry["reason"] == RUNNING
        logits_b1v, cache = model(carry["token"][:, None], position_b[:, None], live_b[:, None],
                                  cache)
        return pick(carry, logits_b1v[:, 0]), _constrain_cache(cache, layout), position_b + 1

    def running(loop):
        carry = loop[0]
        return (carry["step"] < new_tokens) & jnp.any(carry["reason"] == RUNNING)

    k = top_logprobs
    out = (jnp.zeros((b, new_tokens), jnp.int32), jnp.zeros((b, new_tokens), jnp.float32),
           jnp.zeros((b, new_tokens, k), jnp.int32), jnp.zeros((b, new_tokens, k), jnp.float32),
           jnp.zeros((b, new_tokens), jnp.float32))
    carry = dict(step=jnp.int32(0), out=out, reason=jnp.full(b, RUNNING, jnp.int32),
                 count=jnp.zeros(b, jnp.int32), conf=jnp.zeros(b, jnp.float32),
                 stop=jnp.zeros((b, stop_sjv.shape[0]), jnp.int32))
    carry = pick(carry, logits_bv)
    carry, cache, _ = jax.lax.while_loop(running, feed, (carry, cache, position_b))
    reason_b = jnp.where(carry["reason"] == RUNNING, LENGTH, carry["reason"])
    # Returning the cache lets XLA update the donated input buffer in place.
    return carry["out"], reason_b, carry["count"], carry["conf"], cache


def _per_row(value: Any, rows: int, dtype, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim > 1 or (array.ndim == 1 and len(array) != rows):
        raise MarcoError(f"{name} must be one value or one per prompt ({rows}), "
                         f"got shape {array.shape}")
    return np.broadcast_to(array, (rows,)).astype(dtype)


def _check_sampling(temperature: np.ndarray, top_k: np.ndarray, top_p: np.ndarray,
                    seed: np.ndarray, vocab: int) -> None:
    if not np.all(np.isfinite(temperature) & (temperature >= 0)):
        raise MarcoError(f"temperature must be finite and >= 0, got {temperature.tolist()}")
    if np.any((top_k < 0) | (top_k > vocab)):
        raise MarcoError(f"top_k must be in [0, {vocab}] (0: off), got {top_k.tolist()}")
    if not np.all((top_p > 0) & (top_p <= 1)):
        raise MarcoError(f"top_p must be in (0, 1] (1: off), got {top_p.tolist()}")
    if np.any((seed < 0) | (seed >= 2 ** 31)):
        raise MarcoError(f"seeds must be in [0, 2**31), got {seed.tolist()}")


class Sampler:
    """Generates from token prefixes; compiles one program per bucket, once.

    With ``mesh``, parameters are placed by ``rules`` and the batch and KV cache
    are split over the data and tensor axes.
    """

    def __init__(self, model: Qwen2, eos_ids: Sequence[int], *, top_logprobs: int = 5,
                 stop_table: stops.StopTable | None = None, mesh: Mesh | None = None,
                 rules: ShardingRules = ShardingRules()):
        self.cfg = model.cfg
        if not eos_ids:
            raise MarcoError("the sampler needs at least one EOS token id")
        if not 1 <= top_logprobs <= self.cfg.vocab_size:
            raise MarcoError(f"top_logprobs must be in [1, {self.cfg.vocab_size}], "
                             f"got {top_logprobs}")
        self.graphdef, self.state = nnx.split(model)
        self.layout: Layout = None if mesh is None else (mesh, rules)
        if mesh is not None:
            self.state = shard_state(self.state, mesh, rules)
        self.eos_ids = jnp.asarray(eos_ids, jnp.int32)
        self.top_logprobs = top_logprobs
        self.set_stop_table(stop_table or stops.StopTable.empty(self.cfg.vocab_size))
        self._programs: dict[tuple, Any] = {}

    def set_stop_table(self, table: stops.StopTable) -> None:
        if table.table_sjv.shape[-1] != self.cfg.vocab_size:
            raise MarcoError(f"stop table covers {table.table_sjv.shape[-1]} tokens, the model "
                             f"has {self.cfg.vocab_size}")
        self.stop_table = table
        self._stop_arrays = (jnp.asarray(table.table_sjv), jnp.asarray(table.lengths_s))

    @property
    def num_compilations(self) -> int:
        return len(self._programs)

    def program(self, name: str, fn, statics: dict, donate: tuple[str, ...], *args):
        """The compiled ``fn`` for these shapes, compiling (and timing it) on first use;
        other prefills over the same cache (``paged.py``) compile through it too."""
        key = (name, tuple(sorted(statics.items())),
               tuple((a.shape, a.dtype) for a in jax.tree.leaves(args)))
        if key not in self._programs:
            start = time.perf_counter()
            jitted = jax.jit(functools.partial(fn, **statics), static_argnums=0,
                             donate_argnames=donate)
            self._programs[key] = jitted.lower(self.graphdef, *args).compile()
            self._compile_s += time.perf_counter() - start
        return self._programs[key]

    def _put(self, array: np.ndarray) -> jax.Array:
        """Place a per-row host array on the mesh, split over the batch axes."""
        if self.layout is None:
            return jnp.asarray(array)
        mesh, rules = self.layout
        axes = ("batch",) + (None,) * (array.ndim - 1)
        return jax.device_put(array, rules.sharding(axes, array.shape, mesh))

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int], *,
                 temperature: float | Sequence[float] = 0.0, top_k: int | Sequence[int] = 0,
                 top_p: float | Sequence[float] = 1.0,
                 seed: int | Sequence[int] = 0) -> Generation:
        """Continue every prompt by up to ``max_new_tokens`` tokens.

        ``max_new_tokens`` and the sampling parameters are one value or one per
        prompt; an int ``seed`` gives row ``i`` the seed ``seed + i``.
        Temperature 0 is greedy.
        """
        def prefill(tokens: np.ndarray, mask: np.ndarray, new_tokens: int):
            args = (self.state, self._put(tokens), self._put(mask))
            return self.program("prefill", _prefill, dict(new_tokens=new_tokens,
                                                          layout=self.layout), (), *args)(*args)

        gen, _ = self.sample_from(prompts, [len(p) for p in prompts], prefill, max_new_tokens,
                                  temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        return gen

    def sample_from(self, suffixes: Sequence[Sequence[int]], context_lengths: Sequence[int],
                    prefill: Callable, max_new_tokens: int | Sequence[int], *,
                    temperature: float | Sequence[float] = 0.0, top_k: int | Sequence[int] = 0,
                    top_p: float | Sequence[float] = 1.0,
                    seed: int | Sequence[int] = 0) -> tuple[Generation, KVCache]:
        """Decode after a custom ``prefill(tokens_bp, mask_bp, new_tokens) -> (logits_bv,
        cache, position_b)`` of the left-padded ``suffixes``, whose rows continue
        contexts of ``context_lengths`` tokens (a paged prefix cache supplies the
        rest). Returns the generation and the final cache."""
        rows = len(suffixes)
        if rows == 0:
            raise MarcoError("no prompts to generate from")
        vocab = self.cfg.vocab_size
        for i, prompt in enumerate(suffixes):
            if len(prompt) == 0:
                raise MarcoError(f"prompt {i} is empty: every prompt needs at least one token")
            if min(prompt) < 0 or max(prompt) >= vocab:
                raise MarcoError(f"prompt {i} has token ids outside [0, {vocab})")
        max_new_r = _per_row(max_new_tokens, rows, np.int32, "max_new_tokens")
        if max_new_r.min() < 1:
            raise MarcoError(f"max_new_tokens must be >= 1, got {max_new_r.min()}")
        limit = self.cfg.max_position_embeddings
        total = np.asarray(context_lengths) + max_new_r
        if total.max() > limit:
            i = int(np.argmax(total))
            raise MarcoError(f"prompt {i} of {context_lengths[i]} tokens + max_new_tokens "
                             f"{max_new_r[i]} exceeds the model's max_position_embeddings {limit}")
        longest = max(len(p) for p in suffixes)
        max_new = int(max_new_r.max())
        seeds = (np.arange(rows) + seed) if np.ndim(seed) == 0 else seed
        temperature_r = _per_row(temperature, rows, np.float32, "temperature")
        top_k_r = _per_row(top_k, rows, np.int32, "top_k")
        top_p_r = _per_row(top_p, rows, np.float32, "top_p")
        seed_r = _per_row(seeds, rows, np.int64, "seed")
        _check_sampling(temperature_r, top_k_r, top_p_r, seed_r, vocab)

        b = bucket(rows, BATCH_BUCKETS, "batch size")
        p = bucket(longest, LENGTH_BUCKETS, "prompt length")
        n = bucket(max_new, LENGTH_BUCKETS, "max_new_tokens")
        tokens = np.zeros((b, p), np.int32)
        mask = np.zeros((b, p), bool)
        for i, prompt in enumerate(suffixes):
            tokens[i, p - len(prompt):] = prompt
            mask[i, p - len(prompt):] = True
        mask[rows:, -1] = True  # filler rows: one token, so nothing is all-padding

        def padded(values: np.ndarray, fill) -> jax.Array:
            return self._put(np.concatenate([values, np.full(b - rows, fill, values.dtype)]))

        filtering = (temperature_r > 0) & ((top_k_r > 0) | (top_p_r < 1))
        width = 0
        if filtering.any():
            width = min(vocab, max(FILTER_WIDTH, 1 << int(top_k_r.max() - 1).bit_length()))
        self._compile_s = 0.0
        start = time.perf_counter()
        logits_bv, cache, position_b = jax.block_until_ready(prefill(tokens, mask, n))
        compiled_s = self._compile_s
        prefill_s = time.perf_counter() - start - compiled_s

        start = time.perf_counter()
        decode_args = (self.state, cache, logits_bv, position_b, self.eos_ids, *self._stop_arrays,
                       padded(temperature_r, 0.0), padded(top_k_r, 0), padded(top_p_r, 1.0),
                       padded(seed_r.astype(np.int32), 0), padded(max_new_r, 1))
        decode = self.program("decode", _decode, dict(new_tokens=n,
                                                      top_logprobs=self.top_logprobs,
                                                      width=width, layout=self.layout),
                              ("cache",), *decode_args)
        out, reason, count, conf, cache = decode(*decode_args)
        out, reason, count, conf = jax.device_get((out, reason, count, conf))
        decode_s = time.perf_counter() - start - (self._compile_s - compiled_s)

        gen_tokens, token_lp, top_ids, top_lp, confidences = (np.asarray(x)[:rows, :max_new]
                                                              for x in out)
        lengths = np.asarray(count)[:rows]
        return Generation(
            gen_tokens, token_lp, top_ids, top_lp, confidences, lengths,
            [FINISH_REASONS[int(r)] for r in np.asarray(reason)[:rows]],
            np.asarray(conf)[:rows],
            Timing(self._compile_s, prefill_s, decode_s, int(sum(map(len, suffixes))),
                   int(lengths.sum()))), cache
