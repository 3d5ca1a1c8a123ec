"""Attention through block tables: keys and values are read from the pool's
blocks that each row's table lists, so rows of any length share one program.

``paged_attention`` is the one entry point. Everywhere it has an XLA path that
gathers the row's blocks and runs ordinary masked attention (CPU tests, GPU,
prefill chunks); for one-token decode queries on TPU it calls the Pallas
paged-attention kernel, which reads the blocks in place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from marco_jax.model import attend


def gather_attention(q_btnh: jax.Array, k_kpzh: jax.Array, v_kpzh: jax.Array,
                     table_bm: jax.Array, positions_bt: jax.Array) -> jax.Array:
    """XLA path: a query at position ``i`` sees the keys at positions ``<= i``."""
    kv, _, z, h = k_kpzh.shape
    b, m = table_bm.shape

    def gather(pages_kpzh):
        return pages_kpzh[:, table_bm].reshape(kv, b, m * z, h)

    key_positions_s = jnp.arange(m * z)
    allowed_bts = key_positions_s[None, None, :] <= positions_bt[:, :, None]
    return attend(q_btnh, gather(k_kpzh), gather(v_kpzh), allowed_bts, "kbsh")


def kernel_attention(q_btnh: jax.Array, k_kpzh: jax.Array, v_kpzh: jax.Array,
                     table_bm: jax.Array, positions_bt: jax.Array) -> jax.Array:
    """TPU path for one query per row (decode): the Pallas paged-attention kernel."""
    from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention

    b, _, n, h = q_btnh.shape
    m = table_bm.shape[1]
    per_block = next(c for c in (8, 4, 2, 1) if m % c == 0)
    q_bnh = (q_btnh[:, 0] * (h ** -0.5)).astype(k_kpzh.dtype)  # the kernel does not scale
    out_bnh = paged_attention(q_bnh, k_kpzh, v_kpzh, positions_bt[:, 0] + 1, table_bm,
                              pages_per_compute_block=per_block)
    return out_bnh.reshape(b, 1, n, h).astype(q_btnh.dtype)


def kernel_applies(q_btnh: jax.Array, head_dim: int) -> bool:
    """Whether the TPU kernel serves this call: TPU, one query per row, and a
    head dim the kernel tiles (a multiple of 128)."""
    return jax.default_backend() == "tpu" and q_btnh.shape[1] == 1 and head_dim % 128 == 0


def paged_attention(q_btnh: jax.Array, k_kpzh: jax.Array, v_kpzh: jax.Array,
                    table_bm: jax.Array, positions_bt: jax.Array,
                    use_kernel: bool = True) -> jax.Array:
    """Attention of queries (b, t, n, h) at ``positions_bt`` over their rows' blocks."""
    if use_kernel and kernel_applies(q_btnh, k_kpzh.shape[-1]):
        return kernel_attention(q_btnh, k_kpzh, v_kpzh, table_bm, positions_bt)
    return gather_attention(q_btnh, k_kpzh, v_kpzh, table_bm, positions_bt)
