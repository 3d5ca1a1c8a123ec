"""Our own checkpoint layout: ``config.json`` + Orbax ``params/`` + tokenizer files.

The parameter tree is a nested dict keyed by our state path (layer indices as
strings), so a checkpoint can be inspected and restored without the model code.
Saving goes a few hundred MB at a time and restoring can take any subset of
tensors, so converting a model never holds two copies of it in host memory.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Iterable

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import v1 as ocp
from orbax.checkpoint.experimental.v1 import partial

from marco_jax.checkpoint.tensors import batches, require_shapes
from marco_jax.model_config import Qwen2Config
from marco_jax.errors import MarcoError
from marco_jax.files import absolute

PARAMS_DIR = "params"
SAVE_GROUP_BYTES = 256 * 1024**2


def is_orbax_checkpoint(directory: pathlib.Path) -> bool:
    return (directory / "config.json").is_file() and (directory / PARAMS_DIR).is_dir()


def require_empty(directory: epath.PathLike) -> None:
    """Conversions and exports write a new checkpoint, never over an old one."""
    directory = epath.Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise MarcoError(f"{directory}: destination exists and is not empty")


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


def save(directory: epath.PathLike, cfg: Qwen2Config, tensors: Iterable[tuple[str, Any]],
         group_bytes: int = SAVE_GROUP_BYTES) -> None:
    """Write config and ``(dotted key, array)`` pairs as a new checkpoint, about
    ``group_bytes`` at a time.

    In a multi-process run every process calls this with the same keys in the
    same order (global ``jax.Array``s: each process writes the shards it holds);
    process 0 writes the config. ``directory`` may be remote (``gs://...``).
    """
    directory = epath.Path(directory)
    require_empty(directory)
    multihost_utils.sync_global_devices(f"orbax_io.save checked {directory}")
    if jax.process_index() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2))
    path = absolute(directory / PARAMS_DIR)
    for group in batches(tensors, lambda item: item[1].nbytes, group_bytes):
        partial.save(path, nest(dict(group)))
    partial.finalize(path)


def check_shapes(directory: pathlib.Path, expected: dict[str, tuple[int, ...]],
                 ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every stored tensor (by dotted key), checked against ``expected``."""
    try:
        tree = ocp.pytree_metadata((directory / PARAMS_DIR).absolute()).metadata
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise MarcoError(f"{directory}: unreadable Orbax params ({e})") from None
    stored = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flatten(tree).items()}
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    if missing or extra:
        raise MarcoError(f"{directory}: params do not match config.json (missing: "
                         f"{', '.join(missing[:5]) or 'none'}; unexpected: "
                         f"{', '.join(extra[:5]) or 'none'})")
    require_shapes(str(directory), expected, lambda key: stored[key][0])
    return stored


def restore(directory: pathlib.Path, target: dict[str, Any]) -> dict[str, Any]:
    """Restore the tensors named in nested ``target`` (ShapeDtypeStructs with
    shardings, or numpy arrays for host copies); others stay on disk."""
    path = (directory / PARAMS_DIR).absolute()
    options = ocp.options.PyTreeOptions(
        loading=ocp.options.PyTreeOptions.Loading(partial_load=True))
    try:
        with ocp.Context(pytree_options=options):
            return ocp.load_pytree(path, target)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise MarcoError(f"{directory}: cannot restore Orbax params ({e})") from None
