"""GGUF import: hyper-parameters from metadata, tensors dequantized one at a time.

llama.cpp writes Qwen2 without permuting q/k (it uses the NeoX RoPE layout,
which is HF's half-split layout), so a dequantized GGUF tensor is the HF tensor.
"""

from __future__ import annotations

import contextlib
import pathlib
import re
from typing import Any

import numpy as np

from marco_jax.model_config import Qwen2Config, from_hf_dict
from marco_jax.errors import MarcoError

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)")


def hf_name(gguf_name: str) -> str | None:
    """The HF tensor name for a GGUF tensor name (None: not a Qwen2 tensor)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_RE.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    return None


class GGUFReader(contextlib.AbstractContextManager):
    """A GGUF file seen through HF tensor names, dequantizing on ``get``."""

    def __init__(self, path: str | pathlib.Path):
        import gguf  # imported here: only GGUF users need it

        self.path = pathlib.Path(path)
        try:
            self._reader = gguf.GGUFReader(str(self.path))
        except (ValueError, OSError, IndexError) as e:
            raise MarcoError(f"{self.path}: not a readable GGUF file ({e})") from None
        self._dequantize = gguf.dequantize
        self._tensors = {}
        for tensor in self._reader.tensors:
            name = hf_name(tensor.name)
            if name is None:
                raise MarcoError(f"{self.path}: unexpected tensor {tensor.name!r} for Qwen2")
            self._tensors[name] = tensor

    def __exit__(self, *exc):
        self._reader = None

    def field(self, key: str, default: Any = None) -> Any:
        field = self._reader.fields.get(key)
        return default if field is None else field.contents()

    def config(self) -> Qwen2Config:
        arch = self.field("general.architecture")
        if arch != "qwen2":
            raise MarcoError(f"{self.path}: architecture {arch!r} is not qwen2")
        embed = self._tensors["model.embed_tokens.weight"]
        hf = {
            "model_type": "qwen2",
            "vocab_size": int(embed.shape[1]),
            "hidden_size": self.field("qwen2.embedding_length"),
            "intermediate_size": self.field("qwen2.feed_forward_length"),
            "num_hidden_layers": self.field("qwen2.block_count"),
            "num_attention_heads": self.field("qwen2.attention.head_count"),
            "num_key_value_heads": self.field("qwen2.attention.head_count_kv"),
            "rope_theta": self.field("qwen2.rope.freq_base", 10_000.0),
            "rms_norm_eps": self.field("qwen2.attention.layer_norm_rms_epsilon", 1e-6),
            "max_position_embeddings": self.field("qwen2.context_length", 32768),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
            "bos_token_id": self.field("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self.field("tokenizer.ggml.eos_token_id"),
        }
        missing = [k for k, v in hf.items() if v is None and not k.endswith("token_id")]
        if missing:
            raise MarcoError(f"{self.path}: GGUF metadata lacks {', '.join(missing)}")
        return from_hf_dict(hf, str(self.path))

    def names(self) -> set[str]:
        return set(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(n) for n in reversed(self._tensors[name].shape))

    def get(self, name: str) -> np.ndarray:
        tensor = self._tensors[name]
        return np.asarray(self._dequantize(tensor.data, tensor.tensor_type),
                          dtype=np.float32).reshape(self.shape(name))


# tokenizer.ggml.* metadata -> the names transformers' GGUF tokenizer builder reads
_TOKENIZER_KEYS = {"model": "tokenizer_type", "pre": "pre_tokenizer_type", "tokens": "tokens",
                   "scores": "scores", "token_type": "token_type", "merges": "merges",
                   "bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
                   "unknown_token_id": "unk_token_id", "padding_token_id": "pad_token_id",
                   "add_space_prefix": "add_prefix_space"}
_SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                   "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}


def load_tokenizer(path: pathlib.Path):
    """The HF tokenizer rebuilt from the file's ``tokenizer.ggml.*`` metadata: the same
    as ``AutoTokenizer.from_pretrained(dir, gguf_file=...)``, whose metadata reader needs
    torch; ours reads the metadata with the ``gguf`` package, so no torch is needed."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    with GGUFReader(path) as reader:
        found = {name: reader.field(f"tokenizer.ggml.{key}") for key, name in
                 _TOKENIZER_KEYS.items()}
        tokenizer = {name: value for name, value in found.items() if value is not None}
        config = {"chat_template": reader.field("tokenizer.chat_template"),
                  "add_bos_token": reader.field("tokenizer.ggml.add_bos_token"),
                  "add_eos_token": reader.field("tokenizer.ggml.add_eos_token")}
        config = {k: v for k, v in config.items() if v is not None}
        for name, key in _SPECIAL_TOKENS.items():
            token_id = reader.field(f"tokenizer.ggml.{key}")
            config[name] = None if token_id is None else tokenizer["tokens"][token_id]
        architecture = reader.field("general.architecture")
    if "tokens" not in tokenizer:
        raise MarcoError(f"{path}: GGUF metadata has no tokenizer (tokenizer.ggml.tokens)")
    backend, extra = convert_gguf_tokenizer(architecture, tokenizer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)
