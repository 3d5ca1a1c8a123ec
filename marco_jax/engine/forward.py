"""The model's forward pass over the paged KV pool.

Each row's new tokens are written into the pool at (its table's block for the
token's position, position mod block size), then every layer attends through
the row's block table. Rows carry their own positions, so a decode step and a
prefill chunk are the same function with t = 1 or t = chunk.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from marco_jax.engine.attention import paged_attention
from marco_jax.engine.kv_pages import SCRATCH, KVPages
from marco_jax.model import Qwen2


def write_targets(table_bm: jax.Array, positions_bt: jax.Array, valid_bt: jax.Array,
                  block_size: int) -> tuple[jax.Array, jax.Array]:
    """Block and offset that each token's keys/values go to (scratch when not valid)."""
    index_bt = jnp.minimum(positions_bt // block_size, table_bm.shape[1] - 1)  # padding may overrun
    block_bt = jnp.take_along_axis(table_bm, index_bt, axis=1)
    return jnp.where(valid_bt, block_bt, SCRATCH), jnp.where(valid_bt, positions_bt % block_size, 0)


def paged_hidden_states(model: Qwen2, pages: KVPages, tokens_bt: jax.Array,
                        positions_bt: jax.Array, valid_bt: jax.Array, table_bm: jax.Array,
                        use_kernel: bool = True) -> tuple[jax.Array, KVPages]:
    """Final-normed hidden states (b, t, d) of the new tokens, and the pool with
    their keys/values written. Padding tokens (``valid_bt`` False) write to scratch.

    The layers are the model's own (:meth:`Qwen2.hidden_states`); only their
    attention is the pool's: each layer writes its new keys and values into its
    pages, then attends through the rows' block tables.
    """
    block_bt, offset_bt = write_targets(table_bm, positions_bt, valid_bt, pages.block_size)
    pool = {"k": pages.k_lkpzh, "v": pages.v_lkpzh}  # threaded through the layers at trace time

    def attend(layer: int, q_btnh, k_btkh, v_btkh):
        # Mixed indexing puts the (b, t) index dims first: targets are (b, t, k, h).
        for name, new_btkh in (("k", k_btkh), ("v", v_btkh)):
            pool[name] = pool[name].at[layer, :, block_bt, offset_bt].set(
                new_btkh.astype(pool[name].dtype))
        out_btnh = paged_attention(q_btnh, pool["k"][layer], pool["v"][layer], table_bm,
                                   positions_bt, use_kernel)
        return out_btnh.astype(q_btnh.dtype)

    x_btd = model.hidden_states(tokens_bt, positions_bt, attend)
    return x_btd, dataclasses.replace(pages, k_lkpzh=pool["k"], v_lkpzh=pool["v"])
