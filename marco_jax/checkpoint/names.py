"""The one table that relates Hugging Face tensor names and layouts to ours.

HF stores linear weights as (out, in); we store them input-first and split
into heads (``q_weight_dnh``), so that einsums and sharding name each axis.
Every conversion is a transpose and/or reshape: exact in both directions.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from marco_jax.model_config import Qwen2Config


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One tensor: its HF name and shape, our state path and shape, and the maps."""

    hf_name: str
    path: tuple[str, ...]
    hf_shape: tuple[int, ...]
    shape: tuple[int, ...]
    transpose: bool = False  # an HF (out, in) matrix, which we store input-first

    @property
    def key(self) -> str:
        return ".".join(self.path)

    def to_ours(self, x: np.ndarray) -> np.ndarray:
        return (np.ascontiguousarray(x.T) if self.transpose else x).reshape(self.shape)

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        if self.transpose:
            return np.ascontiguousarray(x.reshape(self.hf_shape[::-1]).T)
        return x.reshape(self.hf_shape)


def tensor_specs(cfg: Qwen2Config) -> list[TensorSpec]:
    """Every tensor of the model, in HF's order (embeddings, layers, norm, head)."""
    d, f, n, k, h, v = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                        cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size)
    specs = [TensorSpec("model.embed_tokens.weight", ("embed_vd",), (v, d), (v, d))]
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", ("layers", str(i))
        layer = [  # (HF name, our path, HF shape, our shape, transpose)
            ("input_layernorm.weight", ("attn_norm", "scale_d"), (d,), (d,), False),
            ("self_attn.q_proj.weight", ("attn", "q_weight_dnh"), (n * h, d), (d, n, h), True),
            ("self_attn.q_proj.bias", ("attn", "q_bias_nh"), (n * h,), (n, h), False),
            ("self_attn.k_proj.weight", ("attn", "k_weight_dkh"), (k * h, d), (d, k, h), True),
            ("self_attn.k_proj.bias", ("attn", "k_bias_kh"), (k * h,), (k, h), False),
            ("self_attn.v_proj.weight", ("attn", "v_weight_dkh"), (k * h, d), (d, k, h), True),
            ("self_attn.v_proj.bias", ("attn", "v_bias_kh"), (k * h,), (k, h), False),
            ("self_attn.o_proj.weight", ("attn", "o_weight_nhd"), (d, n * h), (n, h, d), True),
            ("post_attention_layernorm.weight", ("mlp_norm", "scale_d"), (d,), (d,), False),
            ("mlp.gate_proj.weight", ("mlp", "gate_weight_df"), (f, d), (d, f), True),
            ("mlp.up_proj.weight", ("mlp", "up_weight_df"), (f, d), (d, f), True),
            ("mlp.down_proj.weight", ("mlp", "down_weight_fd"), (d, f), (f, d), True),
        ]
        specs += [TensorSpec(hf + name, ours + path, *layout) for name, path, *layout in layer]
    specs.append(TensorSpec("model.norm.weight", ("final_norm", "scale_d"), (d,), (d,)))
    if not cfg.tie_word_embeddings:
        specs.append(TensorSpec("lm_head.weight", ("lm_head_vd",), (v, d), (v, d)))
    return specs
