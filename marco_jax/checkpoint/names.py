"""The one table that relates Hugging Face tensor names and layouts to ours.

HF stores linear weights as (out, in); we store them input-first and split
into heads (``q_weight_dnh``), so that einsums and sharding name each axis.
Every conversion is a transpose and/or reshape: exact in both directions.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np

from marco_jax.config import Qwen2Config

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One tensor: its HF name and shape, our state path and shape, and the maps."""

    hf_name: str
    path: Path
    hf_shape: tuple[int, ...]
    shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]

    @property
    def key(self) -> str:
        return ".".join(self.path)


def _same(shape):
    return shape, shape, (lambda x: x), (lambda x: x)


def _in_proj(out_dim: int, in_dim: int, heads: int, head_dim: int):
    """(heads*head_dim, in) weight <-> (in, heads, head_dim)."""
    return ((out_dim, in_dim), (in_dim, heads, head_dim),
            lambda x: np.ascontiguousarray(x.T).reshape(in_dim, heads, head_dim),
            lambda x: np.ascontiguousarray(x.reshape(in_dim, heads * head_dim).T))


def _bias(heads: int, head_dim: int):
    return ((heads * head_dim,), (heads, head_dim),
            lambda x: x.reshape(heads, head_dim), lambda x: x.reshape(heads * head_dim))


def _out_proj(heads: int, head_dim: int, out_dim: int):
    """(out, heads*head_dim) weight <-> (heads, head_dim, out)."""
    return ((out_dim, heads * head_dim), (heads, head_dim, out_dim),
            lambda x: np.ascontiguousarray(x.T).reshape(heads, head_dim, out_dim),
            lambda x: np.ascontiguousarray(x.reshape(heads * head_dim, out_dim).T))


def _transpose(out_dim: int, in_dim: int):
    return ((out_dim, in_dim), (in_dim, out_dim),
            lambda x: np.ascontiguousarray(x.T), lambda x: np.ascontiguousarray(x.T))


def tensor_specs(cfg: Qwen2Config) -> list[TensorSpec]:
    """Every tensor of the model, in HF's order (embeddings, layers, norm, head)."""
    d, f, n, k, h, v = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                        cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size)
    specs = [("model.embed_tokens.weight", ("embed_vd",), _same((v, d)))]
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", ("layers", str(i))
        specs += [
            (hf + "input_layernorm.weight", ours + ("attn_norm", "scale_d"), _same((d,))),
            (hf + "self_attn.q_proj.weight", ours + ("attn", "q_weight_dnh"), _in_proj(n * h, d, n, h)),
            (hf + "self_attn.q_proj.bias", ours + ("attn", "q_bias_nh"), _bias(n, h)),
            (hf + "self_attn.k_proj.weight", ours + ("attn", "k_weight_dkh"), _in_proj(k * h, d, k, h)),
            (hf + "self_attn.k_proj.bias", ours + ("attn", "k_bias_kh"), _bias(k, h)),
            (hf + "self_attn.v_proj.weight", ours + ("attn", "v_weight_dkh"), _in_proj(k * h, d, k, h)),
            (hf + "self_attn.v_proj.bias", ours + ("attn", "v_bias_kh"), _bias(k, h)),
            (hf + "self_attn.o_proj.weight", ours + ("attn", "o_weight_nhd"), _out_proj(n, h, d)),
            (hf + "post_attention_layernorm.weight", ours + ("mlp_norm", "scale_d"), _same((d,))),
            (hf + "mlp.gate_proj.weight", ours + ("mlp", "gate_weight_df"), _transpose(f, d)),
            (hf + "mlp.up_proj.weight", ours + ("mlp", "up_weight_df"), _transpose(f, d)),
            (hf + "mlp.down_proj.weight", ours + ("mlp", "down_weight_fd"), _transpose(d, f)),
        ]
    specs.append(("model.norm.weight", ("final_norm", "scale_d"), _same((d,))))
    if not cfg.tie_word_embeddings:
        specs.append(("lm_head.weight", ("lm_head_vd",), _same((v, d))))
    return [TensorSpec(name, path, *layout) for name, path, layout in specs]


def iter_state_paths(state) -> Iterator[tuple[Path, object]]:
    """(path with string elements, Variable) for every leaf of an ``nnx.State``."""
    for path, var in state.flat_state():
        yield tuple(str(p) for p in path), var
