"""Attention of the training forward pass, causal within each packed segment, by the
fastest kernel the platform has (all three agree on real tokens up to rounding):

- ``splash``: JAX's Pallas kernel on TPU; never forms the (t, t) scores in HBM, skips
  the blocks above the diagonal, runs per device under ``shard_map``, one
  multi-query kernel per key/value head.
- ``cudnn``: cuDNN's flash attention (``jax.nn.dot_product_attention``) on NVIDIA GPUs.
- ``xla``: the model's own blocked softmax attention (:func:`marco_jax.model.attend`).

``auto``: splash on TPU, cudnn on GPU with 16-bit compute (cuDNN has no float32 kernel),
else xla.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import Mesh, PartitionSpec

from marco_jax.errors import MarcoError
from marco_jax.model import AttendFn, attend
from marco_jax.sharding import ShardingRules
from marco_jax.train.config import ATTENTION_IMPLEMENTATIONS as IMPLEMENTATIONS

SPLASH_BLOCK = 512  # query and key block of the splash kernel (or the whole row if shorter)


def resolve(name: str, platform: str, compute_dtype: str = "bfloat16") -> str:
    """The implementation ``name`` stands for on ``platform`` with ``compute_dtype``."""
    if name not in IMPLEMENTATIONS:
        raise MarcoError(f"model.attention={name!r}: choose one of {', '.join(IMPLEMENTATIONS)}")
    sixteen_bit = compute_dtype in ("bfloat16", "float16")
    if name == "cudnn" and not sixteen_bit:
        raise MarcoError(f"model.attention=cudnn needs 16-bit compute; model.compute_dtype is "
                         f"{compute_dtype} (set it to bfloat16, or model.attention=xla)")
    if name == "auto":
        return {"tpu": "splash", "gpu": "cudnn" if sixteen_bit else "xla"}.get(platform, "xla")
    return name


def segment_mask(segment_ids_bt: jax.Array) -> jax.Array:
    """(b, t, t) bool: query i may see key j (j <= i, same segment)."""
    t = segment_ids_bt.shape[1]
    causal_tt = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
    return causal_tt[None] & (segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :])


def packed_attention(implementation: str, segment_ids_bt: jax.Array, mesh: Mesh | None = None,
                     rules: ShardingRules = ShardingRules(), interpret: bool = False) -> AttendFn:
    """The attention of one forward pass over rows with ``segment_ids_bt`` (0: padding);
    ``interpret`` runs splash in Pallas's interpreter (tests on CPU)."""
    if implementation == "xla":
        allowed_bts = segment_mask(segment_ids_bt)
        return lambda q, k, v: attend(q, k, v, allowed_bts, "bskh")
    if implementation == "cudnn":
        mask_b1ts = segment_mask(segment_ids_bt)[:, None]
        return lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, mask=mask_b1ts, is_causal=True, implementation="cudnn")
    if implementation == "splash":
        return _splash(segment_ids_bt, mesh, rules, interpret)
    raise MarcoError(f"attention implementation {implementation!r}: choose one of xla, "
                     "splash, cudnn")


def _splash_kernel(t: int, group: int, interpret: bool):
    block = min(SPLASH_BLOCK, t)
    if t % block:
        raise MarcoError(f"splash attention: sequence length {t} is not a multiple of "
                         f"{SPLASH_BLOCK}; set data.seq_len to one, or model.attention=xla")
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                              block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                              block_q_dq=block, block_kv_dq=block)
    mask = splash.MultiHeadMask([splash.CausalMask((t, t))] * group)
    return splash.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


def _splash(segment_ids_bt: jax.Array, mesh: Mesh | None, rules: ShardingRules,
            interpret: bool) -> AttendFn:
    def local(q_btnh, k_btkh, v_btkh, segment_ids_bt):
        b, t, n, h = q_btnh.shape
        kv = k_btkh.shape[2]
        kernel = _splash_kernel(t, n // kv, interpret)
        q_bkgth = jnp.moveaxis((q_btnh * h ** -0.5).reshape(b, t, kv, n // kv, h), 1, 3)
        k_bkth, v_bkth = (jnp.swapaxes(a, 1, 2) for a in (k_btkh, v_btkh))

        def row(q_kgth, k_kth, v_kth, ids_t):
            ids = splash.SegmentIds(q=ids_t, kv=ids_t)
            return jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=ids))(q_kgth, k_kth, v_kth)

        out_bkgth = jax.vmap(row)(q_bkgth, k_bkth, v_bkth, segment_ids_bt)
        return jnp.moveaxis(out_bkgth, 3, 1).reshape(b, t, n, h)

    def attention(q_btnh, k_btkh, v_btkh):
        if mesh is None or mesh.size == 1:
            return local(q_btnh, k_btkh, v_btkh, segment_ids_bt)
        tensor = mesh.shape.get("tensor", 1)
        heads = ("tensor" if tensor > 1 and q_btnh.shape[2] % tensor == 0
                 and k_btkh.shape[2] % tensor == 0 else None)
        batch = rules.mesh_axes("batch")
        spec = PartitionSpec(batch, None, heads, None)
        return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, PartitionSpec(batch)),
                             out_specs=spec, check_vma=False)(
            q_btnh, k_btkh, v_btkh, segment_ids_bt)

    return attention
