"""A paged prefix cache: keys and values of token blocks that tree nodes own.

A search keeps continuing the same paths. Instead of prefilling a row's whole
context every call, each tree node stores the keys/values of its own tokens in
fixed-size blocks of a device pool, and a row's context is gathered along its
path: the tree is its own prefix cache. Keys are stored rotated for their
positions, and every path position is fixed, so a gathered block is exactly
what a prefill would recompute. Only a row's *suffix* (tokens no block holds
yet, and the last block of the node being continued, whose final token a
decode never fed back) is prefilled; the suffix and the new action are then
written back to their nodes' blocks.

Block 0 is scratch: padding entries of a page table point at it, and writes
that nothing should keep go there.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from marco_jax.errors import MarcoError
from marco_jax.model import KVCache
from marco_jax.sampler import BATCH_BUCKETS, Generation, Sampler, bucket

BLOCK = 32
SCRATCH = 0


class KVPool:
    """Device blocks (L, blocks, BLOCK, K, H) of keys and values and a host free list."""

    def __init__(self, sampler: Sampler, num_blocks: int, block: int = BLOCK):
        cfg = sampler.cfg
        shape = (cfg.num_layers, num_blocks, block, cfg.num_kv_heads, cfg.head_dim)
        self.k = jnp.zeros(shape, cfg.jnp_compute_dtype)
        self.v = jnp.zeros(shape, cfg.jnp_compute_dtype)
        self.block = block
        self.free = list(range(num_blocks - 1, SCRATCH, -1))

    def alloc(self, tokens: int) -> list[int]:
        need = math.ceil(tokens / self.block)
        if need > len(self.free):
            raise MarcoError(f"KV pool is full: need {need} blocks, {len(self.free)} free; "
                             "give the search a larger pool")
        return [self.free.pop() for _ in range(need)]


@dataclasses.dataclass
class PagedRow:
    """One row: the cached blocks of its context, then the tokens to prefill."""

    blocks: list[int]  # cached prefix, in path order
    fills: list[int]  # tokens held by each block
    suffix: list[int]  # tokens after the cached prefix, prefilled this call
    context_length: int  # cached tokens + len(suffix)
    suffix_blocks: list[int]  # where to store the suffix (block-aligned), [] to drop it
    action_blocks: list[int]  # where to store the first generated tokens, [] to drop them


def _paged_prefill(graphdef: nnx.GraphDef, state: nnx.State, pool_k: jax.Array,
                   pool_v: jax.Array, table_bm: jax.Array, fill_bm: jax.Array,
                   tokens_bt: jax.Array, mask_bt: jax.Array, positions_bt: jax.Array, *,
                   new_tokens: int):
    """Gather each row's blocks into a cache, then prefill its suffix after them."""
    model = nnx.merge(graphdef, state)
    layers, _, block, heads, dim = pool_k.shape
    b, m = table_bm.shape
    t = tokens_bt.shape[1]
    free = jnp.zeros((layers, b, t + new_tokens, heads, dim), pool_k.dtype)

    def gather(pool):
        return jnp.concatenate([pool[:, table_bm].reshape(layers, b, m * block, heads, dim), free],
                               axis=2)

    held_bs = (jnp.arange(block)[None, None] < fill_bm[..., None]).reshape(b, m * block)
    valid_bs = jnp.concatenate([held_bs, jnp.zeros((b, t + new_tokens), bool)], axis=1)
    cache = KVCache(gather(pool_k), gather(pool_v), valid_bs, jnp.int32(m * block))
    x_btd, cache = model.hidden_states(tokens_bt, positions_bt, mask_bt, cache)
    return model.logits(x_btd[:, -1:])[:, 0], cache, positions_bt[:, -1] + 1


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _store(pool_k: jax.Array, pool_v: jax.Array, cache_k: jax.Array, cache_v: jax.Array,
           start_b: jax.Array, targets_bm: jax.Array):
    """Write cache slots [start_b, start_b + M * BLOCK) of each row to blocks ``targets_bm``."""
    layers, _, block, heads, dim = pool_k.shape
    b, m = targets_bm.shape

    def blocks(cache):
        cache = jnp.pad(cache, ((0, 0), (0, 0), (0, m * block), (0, 0), (0, 0)))
        rows = jax.vmap(lambda c, s: jax.lax.dynamic_slice_in_dim(c, s, m * block, axis=1),
                        in_axes=(1, 0), out_axes=1)(cache, start_b)
        return rows.reshape(layers, b, m, block, heads, dim)

    return pool_k.at[:, targets_bm].set(blocks(cache_k)), pool_v.at[:, targets_bm].set(blocks(cache_v))


def _table(lists: Sequence[list[int]], rows: int, width: int) -> np.ndarray:
    table = np.zeros((rows, width), np.int32)
    for i, values in enumerate(lists):
        table[i, :len(values)] = values
    return table


def generate_paged(sampler: Sampler, pool: KVPool, rows: Sequence[PagedRow],
                   max_new_tokens: Sequence[int], **sampling) -> Generation:
    """Sample every row from its cached blocks plus suffix, then store each row's
    suffix and first generated tokens into the blocks it names."""
    b = bucket(len(rows), BATCH_BUCKETS, "batch size")  # the sampler pads to the same
    m = bucket(max(len(r.blocks) for r in rows), (1, 2, 4, 8, 16, 32, 64, 128), "cached blocks")
    table = _table([r.blocks for r in rows], b, m)
    fills = _table([r.fills for r in rows], b, m)
    offsets = {}

    def prefill(tokens_bt: np.ndarray, mask_bt: np.ndarray, new_tokens: int):
        t = tokens_bt.shape[1]
        positions = np.zeros_like(tokens_bt)
        for i, row in enumerate(rows):
            s = len(row.suffix)
            positions[i, t - s:] = row.context_length - s + np.arange(s)
        offsets["suffix"] = np.array([m * pool.block + t - len(r.suffix) for r in rows]
                                     + [0] * (b - len(rows)), np.int32)
        offsets["action"] = np.full(b, m * pool.block + t, np.int32)
        args = (sampler.state, pool.k, pool.v, jnp.asarray(table), jnp.asarray(fills),
                jnp.asarray(tokens_bt), jnp.asarray(mask_bt), jnp.asarray(positions))
        program = sampler.program("paged_prefill", _paged_prefill,
                                  dict(new_tokens=new_tokens), (), *args)
        return program(*args)

    gen, cache = sampler.sample_from([r.suffix for r in rows], [r.context_length for r in rows],
                                     prefill, max_new_tokens, **sampling)
    for name, targets in (("suffix", [r.suffix_blocks for r in rows]),
                          ("action", [r.action_blocks for r in rows])):
        width = max(len(t) for t in targets)
        if not width:
            continue
        table = _table(targets, b, bucket(width, (1, 2, 4, 8, 16, 32), "blocks"))
        pool.k, pool.v = _store(pool.k, pool.v, cache.k_lbskh, cache.v_lbskh,
                                jnp.asarray(offsets[name]), jnp.asarray(table))
    return gen
