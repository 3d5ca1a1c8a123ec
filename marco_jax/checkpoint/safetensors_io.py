"""Hugging Face checkpoint directories: read tensor by tensor, write in shards.

Reading never loads a whole file; writing holds at most one shard of
converted tensors at a time, so converting a model never needs two copies of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
from typing import Callable, Sequence

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from marco_jax.checkpoint.tensors import batches
from marco_jax.errors import MarcoError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                   "generation_config.json")


def is_hf_checkpoint(directory: pathlib.Path) -> bool:
    return (directory / "config.json").is_file() and (
        (directory / SINGLE_FILE).is_file() or (directory / INDEX_FILE).is_file())


class SafetensorsReader(contextlib.AbstractContextManager):
    """Lazy access to every tensor of an HF checkpoint directory, by name.

    Each ``get`` opens, reads and closes its file: a file kept open stays
    memory-mapped, and every page read would then count towards our RSS until
    the end, adding a second copy of the model to the peak.
    """

    def __init__(self, directory: str | pathlib.Path):
        self.directory = pathlib.Path(directory)
        index = self.directory / INDEX_FILE
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (self.directory / SINGLE_FILE).is_file():
            files = [SINGLE_FILE]
        else:
            raise MarcoError(f"{self.directory}: no {SINGLE_FILE} or {INDEX_FILE}")
        self._file_of: dict[str, pathlib.Path] = {}
        self._shape_of: dict[str, tuple[int, ...]] = {}
        for name in files:
            with self._open(self.directory / name) as handle:
                for key in handle.keys():
                    self._file_of[key] = self.directory / name
                    self._shape_of[key] = tuple(handle.get_slice(key).get_shape())

    @staticmethod
    def _open(path: pathlib.Path):
        try:
            return safe_open(str(path), framework="numpy")
        except (SafetensorError, OSError) as e:
            raise MarcoError(f"{path}: unreadable safetensors file ({e})") from None

    def __exit__(self, *exc):
        return None

    def names(self) -> set[str]:
        return set(self._file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shape_of[name]

    def get(self, name: str) -> np.ndarray:
        path = self._file_of[name]
        with self._open(path) as handle:
            try:
                return handle.get_tensor(name)
            except SafetensorError as e:
                raise MarcoError(f"{path}: cannot read tensor {name} ({e})") from None


def write_safetensors(directory: pathlib.Path, sizes: Sequence[tuple[str, int]],
                      fetch: Callable[[list[str]], dict[str, np.ndarray]],
                      max_shard_bytes: int) -> None:
    """Write tensors as HF safetensors shards (+ index when more than one), fetching
    one shard's tensors at a time; a tensor over ``max_shard_bytes`` gets a shard alone."""
    shards = [[name for name, _ in shard]
              for shard in batches(sizes, lambda size: size[1], max_shard_bytes)]
    weight_map = {}
    for i, names in enumerate(shards, start=1):
        filename = SINGLE_FILE if len(shards) == 1 else (
            f"model-{i:05d}-of-{len(shards):05d}.safetensors")
        save_file(fetch(names), str(directory / filename), metadata={"format": "pt"})
        _as_new_file(directory / filename)
        weight_map.update({name: filename for name in names})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(n for _, n in sizes)}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2))


def _as_new_file(path: pathlib.Path) -> None:
    """Give ``path`` the mode any new file gets (0666 less the umask): safetensors
    writes its files 0600, unreadable to the others the checkpoint is shared with."""
    umask = os.umask(0o077)  # reading the umask sets it; meanwhile, the stricter one
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def copy_tokenizer_files(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Copy whichever tokenizer files ``src`` has."""
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
