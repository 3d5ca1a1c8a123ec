"""One entry point from a path to a ready model: HF dir, Orbax checkpoint, GGUF file,
or ``builtin:tiny`` (a random tiny model with a byte-level tokenizer, for demos).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from marco_jax import config as config_lib
from marco_jax import tokenizer as tokenizer_lib
from marco_jax.checkpoint import gguf_io, orbax_io, safetensors_io
from marco_jax.checkpoint.names import iter_state_paths
from marco_jax.checkpoint.tensors import read_tensors
from marco_jax.config import Qwen2Config
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


def read_config(path: str | pathlib.Path) -> Qwen2Config:
    fmt = detect_format(path)
    if fmt == "builtin":
        return config_lib.preset(str(path)[len(BUILTIN_PREFIX):])
    if fmt == "gguf":
        with gguf_io.GGUFReader(path) as reader:
            return reader.config()
    return config_lib.load_hf_config(pathlib.Path(path) / "config.json")


def _logical_axes(cfg: Qwen2Config) -> tuple[nnx.GraphDef, Any, dict[str, tuple]]:
    graphdef, abstract = abstract_model(cfg)
    axes = {".".join(p): v.get_metadata()["logical_axes"] for p, v in iter_state_paths(abstract)}
    return graphdef, abstract, axes


def load(path: str | pathlib.Path, *, param_dtype: str | None = None,
         compute_dtype: str | None = None, mesh: Mesh | None = None,
         rules: ShardingRules = ShardingRules(), with_tokenizer: bool = True) -> LoadedModel:
    """Config, parameters (placed on ``mesh`` if given) and tokenizer from ``path``.

    Tensors stream from disk one at a time straight to their devices.
    """
    fmt = detect_format(path)
    cfg = read_config(path)
    cfg = cfg.replace(param_dtype=param_dtype or cfg.param_dtype,
                      compute_dtype=compute_dtype or cfg.compute_dtype)
    if fmt == "builtin":
        model = init_model(cfg)
        if mesh is not None:
            nnx.update(model, shard_state(nnx.state(model), mesh, rules))
        tokenizer = tokenizer_lib.builtin_tokenizer() if with_tokenizer else None
        return LoadedModel(cfg, model, tokenizer, fmt)

    graphdef, abstract, axes = _logical_axes(cfg)
    dtype = np.dtype(cfg.jnp_param_dtype)

    def sharding_of(key: str, shape) -> Any:
        return None if mesh is None else rules.sharding(axes[key], shape, mesh)

    path = pathlib.Path(path)
    if fmt == "orbax":
        shapes = orbax_io.stored_shapes(path)
        _check_orbax_shapes(path, shapes, abstract)
        target = orbax_io.abstract_target(
            {k: (s, dtype) for k, (s, _) in shapes.items()},
            {k: sharding_of(k, s) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
             for k, (s, _) in shapes.items()})
        params = orbax_io.flatten(orbax_io.restore(path, target))
        tokenizer = tokenizer_lib.load_tokenizer(path) if with_tokenizer else None
    else:
        def place(spec, tensor):
            sharding = sharding_of(spec.key, tensor.shape)
            return jax.device_put(tensor, sharding) if sharding else jnp.asarray(tensor)

        reader_cls = gguf_io.GGUFReader if fmt == "gguf" else safetensors_io.SafetensorsReader
        with reader_cls(path) as reader:
            params = read_tensors(reader, cfg, str(path), place, dtype, desc=f"loading {fmt}")
        tokenizer = None
        if with_tokenizer:
            tokenizer = (gguf_io.load_tokenizer(path) if fmt == "gguf"
                         else tokenizer_lib.load_tokenizer(path))
    abstract.replace_by_pure_dict(orbax_io.nest(params))
    return LoadedModel(cfg, nnx.merge(graphdef, abstract), tokenizer, fmt)


def _check_orbax_shapes(path: pathlib.Path, shapes: dict, abstract) -> None:
    expected = {".".join(p): tuple(v.get_value().shape) for p, v in iter_state_paths(abstract)}
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    if missing or extra:
        raise MarcoError(f"{path}: params do not match config.json (missing: "
                         f"{', '.join(missing[:5]) or 'none'}; unexpected: "
                         f"{', '.join(extra[:5]) or 'none'})")
    for key, shape in expected.items():
        if shapes[key][0] != shape:
            raise MarcoError(f"{path}: tensor {key} has shape {shapes[key][0]}, "
                             f"config expects {shape}")
