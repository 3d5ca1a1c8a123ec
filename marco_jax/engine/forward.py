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
from marco_jax.model import Qwen2, rope_cos_sin


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
    their keys/values written. Padding tokens (``valid_bt`` False) write to scratch."""
    cfg = model.cfg
    block_bt, offset_bt = write_targets(table_bm, positions_bt, valid_bt, pages.block_size)
    cos_bth, sin_bth = rope_cos_sin(positions_bt, cfg.head_dim, cfg.rope_theta)
    x_btd = jnp.take(model.embed_vd[...], tokens_bt, axis=0).astype(cfg.jnp_compute_dtype)
    k_pages, v_pages = pages.k_lkpzh, pages.v_lkpzh
    for i, layer in enumerate(model.layers):
        q_btnh, k_btkh, v_btkh = layer.attn.qkv(layer.attn_norm(x_btd), cos_bth, sin_bth)
        # Mixed indexing puts the (b, t) index dims first: targets are (b, t, k, h).
        k_pages = k_pages.at[i, :, block_bt, offset_bt].set(k_btkh.astype(k_pages.dtype))
        v_pages = v_pages.at[i, :, block_bt, offset_bt].set(v_btkh.astype(v_pages.dtype))
        out_btnh = paged_attention(q_btnh, k_pages[i], v_pages[i], table_bm, positions_bt,
                                   use_kernel)
        x_btd = x_btd + layer.attn.project_out(out_btnh.astype(x_btd.dtype))
        x_btd = x_btd + layer.mlp(layer.mlp_norm(x_btd))
    return model.final_norm(x_btd), dataclasses.replace(pages, k_lkpzh=k_pages, v_lkpzh=v_pages)
