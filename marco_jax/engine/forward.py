"""The model's forward pass over the paged KV pool.

Rows carry their own positions, so a decode step and a prefill chunk are the
same function with t = 1 or t = chunk. Attention reads through block tables, so
rows of any length share one program: an XLA gather of each row's blocks
everywhere (CPU tests, GPU, prefill chunks), and for one-token decode queries
on TPU the Pallas kernel, which reads the blocks in place.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from marco_jax.engine.kv_pages import SCRATCH, KVPages, Placement
from marco_jax.model import Qwen2, attend


def gather_attention(q_btnh: jax.Array, k_kpzh: jax.Array, v_kpzh: jax.Array,
                     table_bm: jax.Array, positions_bt: jax.Array) -> jax.Array:
    """XLA path: a query at position ``i`` sees the keys at positions ``<= i``."""
    kv, _, z, h = k_kpzh.shape
    b, m = table_bm.shape

    def gather(pages_kpzh):
        return pages_kpzh[:, table_bm].reshape(kv, b, m * z, h)

    allowed_bts = jnp.arange(m * z)[None, None, :] <= positions_bt[:, :, None]
    return attend(q_btnh, gather(k_kpzh), gather(v_kpzh), allowed_bts, "kbsh")


def _megacore_mode(placement: Placement, kv_heads: int, rows: int) -> str | None:
    """Split the kernel over a chip's two TensorCores (v4, v5p) by KV head, else by row."""
    mesh = placement.mesh
    if mesh is None or getattr(mesh.devices.flat[0], "num_cores", 1) < 2:
        return None
    return "kv_head" if kv_heads % 2 == 0 else "batch" if rows % 2 == 0 else None


def kernel_attention(q_btnh: jax.Array, k_kpzh: jax.Array, v_kpzh: jax.Array,
                     table_bm: jax.Array, positions_bt: jax.Array,
                     placement: Placement = Placement()) -> jax.Array:
    """TPU path for one query per row (decode): the Pallas paged-attention kernel, per
    device under ``shard_map`` (rows over the batch axes, KV heads over ``tensor``)."""
    from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention

    b, _, n, h = q_btnh.shape
    m = table_bm.shape[1]
    per_block = next(c for c in (8, 4, 2, 1) if m % c == 0)
    q_bnh = (q_btnh[:, 0] * (h ** -0.5)).astype(k_kpzh.dtype)  # the kernel does not scale
    lengths_b = positions_bt[:, 0] + 1

    def kernel(q_bnh, k_kpzh, v_kpzh, lengths_b, table_bm):
        mode = _megacore_mode(placement, k_kpzh.shape[0], q_bnh.shape[0])
        return paged_attention(q_bnh, k_kpzh, v_kpzh, lengths_b, table_bm,
                               pages_per_compute_block=per_block, megacore_mode=mode)

    if placement.mesh is not None:
        rules, mesh = placement.rules, placement.mesh
        rows = rules.spec(("batch",), (b,), mesh)[0]
        heads = rules.spec(("kv_heads",), (k_kpzh.shape[0],), mesh)[0]
        if heads is not None and rules.spec(("kv_heads",), (n,), mesh)[0] is None:
            heads = None  # q heads must split with their KV heads
        kernel = jax.shard_map(
            kernel, mesh=mesh, check_vma=False,
            in_specs=(P(rows, heads, None), P(heads, None, None, None),
                      P(heads, None, None, None), P(rows), P(rows, None)),
            out_specs=P(rows, heads, None))
    out_bnh = kernel(q_bnh, k_kpzh, v_kpzh, lengths_b, table_bm)
    return out_bnh.reshape(b, 1, n, h).astype(q_btnh.dtype)


def kernel_applies(q_btnh: jax.Array, k_kpzh: jax.Array) -> bool:
    """Whether the TPU kernel can serve this call: one query per row, head dim a multiple
    of 128, and a bfloat16 pool (the kernel computes on bfloat16 K/V, so a float32 pool
    takes the exact gather path). The caller decides whether the program is for a TPU."""
    return (q_btnh.shape[1] == 1 and k_kpzh.shape[-1] % 128 == 0
            and k_kpzh.dtype == jnp.bfloat16)


def paged_attention(q_btnh: jax.Array, k_kpzh: jax.Array, v_kpzh: jax.Array,
                    table_bm: jax.Array, positions_bt: jax.Array,
                    kernel_on: Placement | None = None) -> jax.Array:
    """Attention of queries (b, t, n, h) at ``positions_bt`` over their rows' blocks;
    ``kernel_on``: the TPU placement whose kernel serves the calls it applies to."""
    if kernel_on is not None and kernel_applies(q_btnh, k_kpzh):
        return kernel_attention(q_btnh, k_kpzh, v_kpzh, table_bm, positions_bt, kernel_on)
    return gather_attention(q_btnh, k_kpzh, v_kpzh, table_bm, positions_bt)


def paged_hidden_states(model: Qwen2, pages: KVPages, tokens_bt: jax.Array,
                        positions_bt: jax.Array, valid_bt: jax.Array, table_bm: jax.Array,
                        kernel_on: Placement | None = None) -> tuple[jax.Array, KVPages]:
    """Final-normed hidden states (b, t, d) of the new tokens, and the pool with
    their keys/values written (padding tokens write to scratch). The layers are the
    model's own; each one's attention writes its pages, then reads through the tables."""
    size = pages.block_size
    index_bt = jnp.minimum(positions_bt // size, table_bm.shape[1] - 1)  # padding may overrun
    block_bt = jnp.where(valid_bt, jnp.take_along_axis(table_bm, index_bt, axis=1), SCRATCH)
    offset_bt = jnp.where(valid_bt, positions_bt % size, 0)
    pool = {"k": pages.k_kpzh, "v": pages.v_kpzh}  # threaded through the layers at trace time

    def layer_attention(layer: int, q_btnh, k_btkh, v_btkh):
        first = pages.first_page(layer)
        for name, new_btkh in (("k", k_btkh), ("v", v_btkh)):
            pool[name] = pool[name].at[:, first + block_bt, offset_bt].set(
                jnp.moveaxis(new_btkh, 2, 0).astype(pool[name].dtype))  # targets (k, b, t, h)
        out_btnh = paged_attention(q_btnh, pool["k"], pool["v"], first + table_bm,
                                   positions_bt, kernel_on)
        return out_btnh.astype(q_btnh.dtype)

    x_btd = model.hidden_states(tokens_bt, positions_bt, layer_attention)
    return x_btd, dataclasses.replace(pages, k_kpzh=pool["k"], v_kpzh=pool["v"])
