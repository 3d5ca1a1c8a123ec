"""One entry point from a path to a ready model: HF dir, Orbax checkpoint, GGUF file,
``demo`` (a real Qwen2 fetched on first use: :mod:`marco_jax.demo_model`) or
``builtin:tiny`` (a random tiny model with a byte-level tokenizer, for tests).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from marco_jax import demo_model
from marco_jax import model_config as config_lib
from marco_jax import tokenizer as tokenizer_lib
from marco_jax.checkpoint import gguf_io, orbax_io, safetensors_io
from marco_jax.checkpoint.names import tensor_specs
from marco_jax.checkpoint.tensors import iter_tensors
from marco_jax.model_config import Qwen2Config
from marco_jax.errors import MarcoError
from marco_jax.model import Qwen2, abstract_model, init_model
from marco_jax.sharding import ShardingRules, shard_state

BUILTIN_PREFIX = "builtin:"


@dataclasses.dataclass
class LoadedModel:
    cfg: Qwen2Config
    model: Qwen2
    tokenizer: Any
    source_format: str  # "hf", "orbax", "gguf" or "builtin"

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """The config's EOS ids that exist in the vocabulary, plus the tokenizer's
        (a chat model ends its turn with <|im_end|>, which the config may omit)."""
        ids = [i for i in self.cfg.eos_token_ids if i < self.cfg.vocab_size]
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is not None and eos not in ids:
            ids.append(eos)
        return tuple(ids)


def locate(path: str | pathlib.Path) -> str | pathlib.Path:
    """``demo``: the demo model's file (downloaded on first use); any other path as given."""
    return demo_model.demo_model() if str(path) == demo_model.DEMO else path


def detect_format(path: str | pathlib.Path) -> str:
    """"hf", "orbax", "gguf" or "builtin"; a clear error for anything else."""
    if str(path).startswith(BUILTIN_PREFIX):
        return "builtin"
    path = pathlib.Path(path)
    if not path.exists():
        raise MarcoError(f"{path}: no such file or directory")
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) == b"GGUF":
                return "gguf"
        raise MarcoError(f"{path}: not a GGUF file (expected an HF or Orbax checkpoint "
                         "directory, or a .gguf file)")
    if orbax_io.is_orbax_checkpoint(path):
        return "orbax"
    if safetensors_io.is_hf_checkpoint(path):
        return "hf"
    raise MarcoError(f"{path}: not a checkpoint directory (expected config.json with "
                     "model.safetensors[.index.json], or config.json with params/)")


def checkpoint_config(path: str | pathlib.Path, fmt: str | None = None) -> Qwen2Config:
    """The architecture of the checkpoint at ``path`` (any format), without its weights."""
    path = locate(path)
    fmt = fmt or detect_format(path)
    if fmt == "builtin":
        return config_lib.preset(str(path)[len(BUILTIN_PREFIX):])
    if fmt == "gguf":
        with gguf_io.GGUFReader(path) as reader:
            return reader.config()
    return config_lib.load_hf_config(pathlib.Path(path) / "config.json")


def checkpoint_tokenizer(path: str | pathlib.Path, fmt: str | None = None):
    """The tokenizer of the checkpoint at ``path`` (any format)."""
    path = locate(path)
    fmt = fmt or detect_format(path)
    if fmt == "builtin":
        return tokenizer_lib.builtin_tokenizer()
    if fmt == "gguf":
        return gguf_io.load_tokenizer(pathlib.Path(path))
    return tokenizer_lib.load_tokenizer(path)


def load(path: str | pathlib.Path, *, param_dtype: str | None = None,
         compute_dtype: str | None = None, mesh: Mesh | None = None,
         rules: ShardingRules = ShardingRules(), with_tokenizer: bool = True) -> LoadedModel:
    """Config, parameters (placed on ``mesh`` if given) and tokenizer from ``path``."""
    path = locate(path)
    fmt = detect_format(path)
    gguf_reader = gguf_io.GGUFReader(path) if fmt == "gguf" else None  # metadata and tensors
    cfg = gguf_reader.config() if gguf_reader else checkpoint_config(path, fmt)
    cfg = cfg.replace(param_dtype=param_dtype or cfg.param_dtype,
                      compute_dtype=compute_dtype or cfg.compute_dtype)
    if fmt == "builtin":
        model = init_model(cfg)
        if mesh is not None:
            nnx.update(model, shard_state(nnx.state(model), mesh, rules))
    else:
        model = _read_model(pathlib.Path(path), fmt, cfg, gguf_reader, mesh, rules)
    tokenizer = checkpoint_tokenizer(path, fmt) if with_tokenizer else None
    return LoadedModel(cfg, model, tokenizer, fmt)


def _read_model(path: pathlib.Path, fmt: str, cfg: Qwen2Config,
                gguf_reader: gguf_io.GGUFReader | None, mesh: Mesh | None,
                rules: ShardingRules) -> Qwen2:
    """The stored model, its tensors streamed one at a time straight to their devices."""
    graphdef, abstract = abstract_model(cfg)
    axes = {".".join(map(str, p)): v.get_metadata()["logical_axes"]
            for p, v in abstract.flat_state()}
    dtype = np.dtype(cfg.jnp_param_dtype)

    def sharding_of(key: str, shape) -> jax.sharding.Sharding:
        if mesh is None:
            return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return rules.sharding(axes[key], shape, mesh)

    if fmt == "orbax":
        stored = orbax_io.check_shapes(path, {s.key: s.shape for s in tensor_specs(cfg)})
        params = orbax_io.restore(path, orbax_io.nest({
            k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding_of(k, shape))
            for k, (shape, _) in stored.items()}))
    else:
        with gguf_reader or safetensors_io.SafetensorsReader(path) as reader:
            params = orbax_io.nest({
                spec.key: jax.device_put(tensor, sharding_of(spec.key, tensor.shape))
                for spec, tensor in iter_tensors(reader, cfg, str(path), dtype, f"loading {fmt}")})
    abstract.replace_by_pure_dict(params)
    return nnx.merge(graphdef, abstract)
