"""Qwen2 model configuration: read from a Hugging Face ``config.json`` or a preset.

Anything in the file that would change the numbers and that we do not implement
(sliding-window attention, RoPE scaling, another activation) is an error, never
silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax.numpy as jnp

from marco_jax.errors import MarcoError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
QWEN2_ARCHITECTURE = "Qwen2ForCausalLM"


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    """Architecture hyper-parameters plus the dtypes we run in."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    param_dtype: str = "float32"
    compute_dtype: str = "float32"

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise MarcoError(
                f"num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise MarcoError(f"head_dim={self.head_dim} must be even for RoPE")
        for field in ("param_dtype", "compute_dtype"):
            if getattr(self, field) not in DTYPES:
                raise MarcoError(f"{field}={getattr(self, field)!r}: choose one of {sorted(DTYPES)}")

    @property
    def jnp_param_dtype(self):
        return DTYPES[self.param_dtype]

    @property
    def jnp_compute_dtype(self):
        return DTYPES[self.compute_dtype]

    def replace(self, **changes: Any) -> "Qwen2Config":
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count, for memory estimates and progress messages."""
        d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_heads * h, self.num_kv_heads * h
        attn = d * q + q + 2 * (d * kv + kv) + q * d
        layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_layers * layer + d + head

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` that transformers' Qwen2ForCausalLM loads."""
        eos = list(self.eos_token_ids)
        return {
            "architectures": [QWEN2_ARCHITECTURE],
            "model_type": "qwen2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_sliding_window": False,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
            "torch_dtype": self.param_dtype,
        }


def _unsupported(path: str, what: str) -> MarcoError:
    return MarcoError(f"{path}: {what} is not supported by marco-jax's Qwen2")


def from_hf_dict(cfg: dict[str, Any], source: str = "config.json") -> Qwen2Config:
    """Validate an HF Qwen2 config dict and turn it into a :class:`Qwen2Config`."""
    model_type = cfg.get("model_type")
    if model_type not in ("qwen2", None):
        raise _unsupported(source, f"model_type={model_type!r}")
    # Another architecture's config may name enough of the same fields to load as wrong
    # numbers: without model_type, architectures is what says which model the file is.
    architectures = cfg.get("architectures") or []
    if not isinstance(architectures, list) or any(a != QWEN2_ARCHITECTURE for a in architectures):
        raise MarcoError(f"{source}: architectures={architectures!r} is not supported by "
                         f"marco-jax, which reads {QWEN2_ARCHITECTURE} checkpoints")
    if cfg.get("hidden_act", "silu") != "silu":
        raise _unsupported(source, f"hidden_act={cfg['hidden_act']!r}")
    if cfg.get("use_sliding_window"):
        raise _unsupported(source, "use_sliding_window=true (sliding-window attention)")
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling")
    rope_type = rope.get("rope_type", "default")
    if scaling:
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type != "default":
        raise _unsupported(source, f"RoPE scaling of type {rope_type!r}")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise MarcoError(f"{source}: missing field(s) {', '.join(missing)}")
    heads = int(cfg["num_attention_heads"])
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    return Qwen2Config(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
        rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10_000.0))),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 32768)),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=eos_ids,
    )


def load_hf_config(path: str | pathlib.Path) -> Qwen2Config:
    """Read ``config.json`` (or a directory holding one)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise MarcoError(f"{path}: no such config file")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MarcoError(f"{path}: not valid JSON ({e})") from None
    return from_hf_dict(cfg, str(path))


PRESETS: dict[str, Qwen2Config] = {
    "tiny": Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10_000.0,
                        tie_word_embeddings=True, max_position_embeddings=2048),
    "qwen2-0.5b": Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                              num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64,
                              tie_word_embeddings=True, eos_token_ids=(151643,)),
    "qwen2-1.5b": Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                              num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128,
                              tie_word_embeddings=True, eos_token_ids=(151643,)),
    "qwen2-7b": Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                            num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128,
                            tie_word_embeddings=False, eos_token_ids=(151643,)),
}


def preset(name: str) -> Qwen2Config:
    if name not in PRESETS:
        raise MarcoError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
