"""Qwen2 in Flax NNX, computing what Hugging Face's ``Qwen2ForCausalLM`` computes.

Shape suffixes: b batch, t query length, s key/cache length, d model width,
n query heads, k key/value heads, g query heads per kv head, h head dim,
f MLP width, v vocabulary, l layers.

Every parameter is an ``nnx.Param`` carrying ``logical_axes`` (one name per
dimension); ``sharding.ShardingRules`` maps those names onto a mesh.

Left-padded batches work through explicit ``positions_bt`` (RoPE) and
``mask_bt`` (which tokens are real): a padded row gives the same logits for its
real tokens as the unpadded row does.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from marco_jax import loops
from marco_jax.model_config import Qwen2Config

_cp = jax.checkpoint_policies
_OFFLOAD = dict(offload_src="device", offload_dst="pinned_host")

# Backward-pass policies of the scanned layers, by name (MaxText's remat_policy):
# what a layer keeps for the backward pass, in device memory or offloaded to the
# host's pinned memory (TPU, GPU); the rest is recomputed. Names of a layer's
# activations: layer_input, query_proj, key_proj, value_proj, attention_out
# (before the output projection), mlp_hidden (silu(gate) * up).
REMAT_POLICIES = {
    "none": None,  # keep everything: no recomputation, the most memory
    "full": _cp.nothing_saveable,  # keep only each layer's input
    "dots": _cp.dots_with_no_batch_dims_saveable,  # keep weight matmuls
    "save_qkv_proj": _cp.save_only_these_names("query_proj", "key_proj", "value_proj"),
    "save_out_proj": _cp.save_only_these_names("attention_out"),
    # full remat, each layer's input kept in host memory instead of HBM
    "offload_layer_input": _cp.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=["layer_input"], **_OFFLOAD),
    # layer input and q/k/v projections in host memory (MaxText's "custom" 8B recipe)
    "offload_qkv_proj": _cp.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=[
            "layer_input", "query_proj", "key_proj", "value_proj"], **_OFFLOAD),
}

# (queries (b, t, n, h), keys (b, t, k, h), values) -> outputs (b, t, n, h): one
# layer's attention, which knows its own mask and where its keys and values live.
AttendFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
# (layer index, queries, keys, values) -> outputs: the attention of every layer.
LayerAttendFn = Callable[[int | jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]

_NEG_INF = -1e30  # finite, so a fully masked (padding) query row stays NaN-free


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...],
           dtype, init: str = "normal") -> nnx.Param:
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        value = (0.02 * jax.random.normal(rngs.params(), shape)).astype(dtype)
    return nnx.Param(value, logical_axes=axes)


class RMSNorm(nnx.Module):
    """Normalise in float32, cast back, then scale (HF's order of operations)."""

    def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
        self.scale_d = _param(rngs, (cfg.hidden_size,), ("norm",), cfg.jnp_param_dtype, "ones")
        self.eps = cfg.rms_norm_eps

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        x32 = x_btd.astype(jnp.float32)
        var_bt1 = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        normed = (x32 * jax.lax.rsqrt(var_bt1 + self.eps)).astype(x_btd.dtype)
        return self.scale_d[...].astype(x_btd.dtype) * normed


def rope_cos_sin(positions_bt: jax.Array, head_dim: int, theta: float):
    """cos and sin of shape (b, t, h) for HF's half-split ("rotate_half") layout."""
    inv_freq_h2 = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs_bth2 = positions_bt.astype(jnp.float32)[..., None] * inv_freq_h2
    emb_bth = jnp.concatenate([freqs_bth2, freqs_bth2], axis=-1)
    return jnp.cos(emb_bth), jnp.sin(emb_bth)


def apply_rope(x_btnh: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array) -> jax.Array:
    half = x_btnh.shape[-1] // 2
    rotated = jnp.concatenate([-x_btnh[..., half:], x_btnh[..., :half]], axis=-1)
    cos, sin = (c[:, :, None, :].astype(x_btnh.dtype) for c in (cos_bth, sin_bth))
    return x_btnh * cos + rotated * sin


class Attention(nnx.Module):
    """Grouped-query attention; bias on q, k and v, none on the output projection."""

    def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
        d, n, k, h, dt = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                          cfg.jnp_param_dtype)
        self.q_weight_dnh = _param(rngs, (d, n, h), ("embed", "q_heads", "head_dim"), dt)
        self.q_bias_nh = _param(rngs, (n, h), ("q_heads", "head_dim"), dt, "zeros")
        self.k_weight_dkh = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), dt)
        self.k_bias_kh = _param(rngs, (k, h), ("kv_heads", "head_dim"), dt, "zeros")
        self.v_weight_dkh = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), dt)
        self.v_bias_kh = _param(rngs, (k, h), ("kv_heads", "head_dim"), dt, "zeros")
        self.o_weight_nhd = _param(rngs, (n, h, d), ("q_heads", "head_dim", "embed"), dt)
        self.cfg = cfg

    def qkv(self, x_btd: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array):
        """Rotated queries (b, t, n, h) and keys, and values (b, t, k, h)."""
        cdt = x_btd.dtype
        q_btnh = jnp.einsum("btd,dnh->btnh", x_btd, self.q_weight_dnh[...].astype(cdt))
        q_btnh = checkpoint_name(q_btnh + self.q_bias_nh[...].astype(cdt), "query_proj")
        k_btkh = jnp.einsum("btd,dkh->btkh", x_btd, self.k_weight_dkh[...].astype(cdt))
        k_btkh = checkpoint_name(k_btkh + self.k_bias_kh[...].astype(cdt), "key_proj")
        v_btkh = jnp.einsum("btd,dkh->btkh", x_btd, self.v_weight_dkh[...].astype(cdt))
        v_btkh = checkpoint_name(v_btkh + self.v_bias_kh[...].astype(cdt), "value_proj")
        return apply_rope(q_btnh, cos_bth, sin_bth), apply_rope(k_btkh, cos_bth, sin_bth), v_btkh

    def project_out(self, out_btnh: jax.Array) -> jax.Array:
        out_btnh = checkpoint_name(out_btnh, "attention_out")
        return jnp.einsum("btnh,nhd->btd", out_btnh, self.o_weight_nhd[...].astype(out_btnh.dtype))

    def __call__(self, x_btd: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array,
                 attend: AttendFn) -> jax.Array:
        return self.project_out(attend(*self.qkv(x_btd, cos_bth, sin_bth)))


QUERY_CHUNK = 512  # queries per attention block once a call has 2 or more blocks


def attend(q_btnh: jax.Array, k_keys: jax.Array, v_keys: jax.Array, allowed_bts: jax.Array,
           key_layout: str) -> jax.Array:
    """Grouped-query softmax attention of queries over keys/values laid out as
    ``key_layout`` ("bskh", or "kbsh" as a paged gather yields them), where
    ``allowed_bts`` marks the keys each query may see; float32 logits.

    Long calls attend QUERY_CHUNK queries at a time, each block recomputed in
    the backward pass, so the float32 (heads, t, s) logits and their gradient
    never exist whole (Qwen2-7B at 4096 tokens: 1.75 GiB each per layer). Every
    query row is computed exactly as unblocked."""
    t = q_btnh.shape[1]
    if t < 2 * QUERY_CHUNK or t % QUERY_CHUNK:
        return _attend_block(q_btnh, k_keys, v_keys, allowed_bts, key_layout)
    blocks = t // QUERY_CHUNK
    split = lambda a: jnp.moveaxis(  # noqa: E731
        a.reshape(a.shape[0], blocks, QUERY_CHUNK, *a.shape[2:]), 1, 0)
    block = jax.checkpoint(
        lambda qa: _attend_block(qa[0], k_keys, v_keys, qa[1], key_layout))
    out_xbcnh = loops.map(block, (split(q_btnh), split(allowed_bts)))
    return jnp.moveaxis(out_xbcnh, 0, 1).reshape(q_btnh.shape)


def _attend_block(q_btnh: jax.Array, k_keys: jax.Array, v_keys: jax.Array,
                  allowed_bts: jax.Array, key_layout: str) -> jax.Array:
    b, t, n, h = q_btnh.shape
    kv = k_keys.shape[key_layout.index("k")]
    q_btkgh = q_btnh.reshape(b, t, kv, n // kv, h)
    logits_bkgts = jnp.einsum(f"btkgh,{key_layout}->bkgts", q_btkgh, k_keys,
                              preferred_element_type=jnp.float32) * (h ** -0.5)
    logits_bkgts = jnp.where(allowed_bts[:, None, None], logits_bkgts, _NEG_INF)
    probs_bkgts = jax.nn.softmax(logits_bkgts, axis=-1).astype(q_btnh.dtype)
    out_btkgh = jnp.einsum(f"bkgts,{key_layout}->btkgh", probs_bkgts, v_keys)
    return out_btkgh.reshape(b, t, n, h)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
        d, f, dt = cfg.hidden_size, cfg.intermediate_size, cfg.jnp_param_dtype
        self.gate_weight_df = _param(rngs, (d, f), ("embed", "mlp"), dt)
        self.up_weight_df = _param(rngs, (d, f), ("embed", "mlp"), dt)
        self.down_weight_fd = _param(rngs, (f, d), ("mlp", "embed"), dt)

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        cdt = x_btd.dtype
        gate_btf = jnp.einsum("btd,df->btf", x_btd, self.gate_weight_df[...].astype(cdt))
        up_btf = jnp.einsum("btd,df->btf", x_btd, self.up_weight_df[...].astype(cdt))
        hidden_btf = checkpoint_name(jax.nn.silu(gate_btf) * up_btf, "mlp_hidden")
        return jnp.einsum("btf,fd->btd", hidden_btf, self.down_weight_fd[...].astype(cdt))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    """One block, the same in every forward pass: inference over the paged KV pool,
    the plain forward and the scanned training forward differ only in ``attend``."""

    def __call__(self, x_btd: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array,
                 attend: AttendFn) -> jax.Array:
        x_btd = x_btd + self.attn(self.attn_norm(x_btd), cos_bth, sin_bth, attend)
        return x_btd + self.mlp(self.mlp_norm(x_btd))


class Qwen2(nnx.Module):
    """Decoder-only Qwen2 language model returning float32 logits."""

    def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
        dt = cfg.jnp_param_dtype
        self.embed_vd = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), dt)
        self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head_vd = _param(rngs, (cfg.vocab_size, cfg.hidden_size),
                                     ("vocab", "embed"), dt)
        self.cfg = cfg

    def __call__(self, tokens_bt: jax.Array, positions_bt: jax.Array,
                 mask_bt: jax.Array | None = None) -> jax.Array:
        """float32 logits (b, t, v): causal attention over this call's real tokens
        (``mask_bt``, default all; padding sees nothing)."""
        t = tokens_bt.shape[1]
        mask_bt = jnp.ones(tokens_bt.shape, bool) if mask_bt is None else mask_bt
        causal_tt = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
        allowed_bts = causal_tt[None] & mask_bt[:, None, :]
        x_btd = self.hidden_states(tokens_bt, positions_bt,
                                   lambda _, q, k, v: attend(q, k, v, allowed_bts, "bskh"))
        return self.logits(x_btd)

    def hidden_states(self, tokens_bt: jax.Array, positions_bt: jax.Array,
                      attend: LayerAttendFn,
                      scanned_layers: tuple[nnx.GraphDef, dict] | None = None,
                      remat: str = "none", act_sharding: jax.sharding.Sharding | None = None,
                      ) -> jax.Array:
        """Final-normed hidden states (b, t, d), the one pass through the layers
        that every caller shares: a sampler needs the head only at the last
        position, which saves a (b, t, vocab) product.

        ``attend(layer, q, k, v)`` is layer ``layer``'s attention: masked XLA
        attention over this call's tokens (:meth:`__call__`), the paged KV pool
        (the engine, which also writes the new keys and values there), or a
        training kernel over packed segments. Training passes ``scanned_layers``:
        one layer's graph and every layer's parameters stacked on a leading axis,
        run by ``lax.scan`` instead of ``self.layers``, so XLA gathers one layer's
        fsdp shards at a time and compiles one layer body (``remat`` names a
        :data:`REMAT_POLICIES` entry: what of a layer's activations the backward
        pass recomputes; the layer index is then traced). ``act_sharding`` pins the
        (b, t, d) activations between layers to the batch mesh axes.
        """
        cfg = self.cfg
        cos_bth, sin_bth = rope_cos_sin(positions_bt, cfg.head_dim, cfg.rope_theta)
        pin = (lambda x: x) if act_sharding is None else (
            lambda x: jax.lax.with_sharding_constraint(x, act_sharding))
        x_btd = pin(jnp.take(self.embed_vd[...], tokens_bt, axis=0).astype(cfg.jnp_compute_dtype))
        if scanned_layers is not None:
            layer_def, stacked = scanned_layers

            def one_layer(x_btd, index_and_params):
                index, layer_params = index_and_params
                layer = nnx.merge(layer_def, layer_params)
                x_btd = checkpoint_name(x_btd, "layer_input")
                return pin(layer(x_btd, cos_bth, sin_bth, functools.partial(attend, index))), None

            policy = REMAT_POLICIES[remat]
            body = one_layer if remat == "none" else jax.checkpoint(one_layer, policy=policy)
            count = jax.tree.leaves(stacked)[0].shape[0]
            x_btd, _ = loops.scan(body, x_btd, (jnp.arange(count), stacked))
        else:
            for i, layer in enumerate(self.layers):
                x_btd = pin(layer(x_btd, cos_bth, sin_bth, functools.partial(attend, i)))
        return self.final_norm(x_btd)

    def head(self) -> jax.Array:
        """The output projection (v, d): the embedding when tied."""
        return (self.embed_vd if self.cfg.tie_word_embeddings else self.lm_head_vd)[...]

    def logits(self, x_btd: jax.Array, head_vd: jax.Array | None = None) -> jax.Array:
        """float32 logits (b, t, v) from final hidden states (``head_vd``: the head
        already cast to the compute dtype, hoisted out of a loop over chunks)."""
        head_vd = self.head() if head_vd is None else head_vd
        return jnp.einsum("btd,vd->btv", x_btd, head_vd.astype(x_btd.dtype),
                          preferred_element_type=jnp.float32)


def init_model(cfg: Qwen2Config, seed: int = 0) -> Qwen2:
    """A randomly initialised model (tests, the built-in demo)."""
    return Qwen2(cfg, rngs=nnx.Rngs(params=seed))


def abstract_model(cfg: Qwen2Config) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph and shape-only state, to fill from a checkpoint without allocating twice."""
    return nnx.split(nnx.eval_shape(lambda: Qwen2(cfg, rngs=nnx.Rngs(params=0))))
