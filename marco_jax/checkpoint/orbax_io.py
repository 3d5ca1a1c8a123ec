"""Our own checkpoint layout: ``config.json`` + Orbax ``params/`` + tokenizer files.

The parameter tree is a nested dict keyed by our state path (layer indices as
strings), so a checkpoint can be inspected and restored without the model code.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from marco_jax.config import Qwen2Config, load_hf_config
from marco_jax.errors import MarcoError

PARAMS_DIR = "params"


def is_orbax_checkpoint(directory: pathlib.Path) -> bool:
    return (directory / "config.json").is_file() and (directory / PARAMS_DIR).is_dir()


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{'a.b': x} -> {'a': {'b': x}}."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inverse of :func:`nest`."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def save(directory: pathlib.Path, cfg: Qwen2Config, params: dict[str, Any]) -> None:
    """Write config and nested ``params`` (numpy or jax arrays) as a new checkpoint."""
    if directory.exists() and any(directory.iterdir()):
        raise MarcoError(f"{directory}: destination exists and is not empty")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((directory / PARAMS_DIR).absolute(), params)
    checkpointer.wait_until_finished()


def load_config(directory: pathlib.Path) -> Qwen2Config:
    return load_hf_config(directory / "config.json")


def stored_shapes(directory: pathlib.Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every stored tensor, keyed by dotted path."""
    meta = ocp.StandardCheckpointer().metadata((directory / PARAMS_DIR).absolute())
    tree = meta.item_metadata.tree
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flatten(tree).items()}


def restore(directory: pathlib.Path, target: dict[str, Any] | None = None) -> dict[str, Any]:
    """Restore the nested params; ``target`` (ShapeDtypeStructs with shardings)
    places them on devices, without it they come back as numpy arrays."""
    path = (directory / PARAMS_DIR).absolute()
    try:
        return ocp.StandardCheckpointer().restore(path, target)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise MarcoError(f"{directory}: cannot restore Orbax params ({e})") from None


def abstract_target(shapes: dict[str, tuple[tuple[int, ...], Any]],
                    shardings: dict[str, Any] | None = None) -> dict[str, Any]:
    """A nested restore target of ShapeDtypeStructs."""
    return nest({k: jax.ShapeDtypeStruct(s, d, sharding=(shardings or {}).get(k))
                 for k, (s, d) in shapes.items()})
