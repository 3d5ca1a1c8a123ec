"""Hugging Face checkpoint directories: read tensor by tensor, write in shards.

Reading never loads a whole file; writing holds at most one shard of
converted tensors at a time, so converting a model never needs two copies of it.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
from typing import Callable, Sequence

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

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
    """Lazy access to every tensor of an HF checkpoint directory, by name."""

    def __init__(self, directory: str | pathlib.Path):
        self.directory = pathlib.Path(directory)
        index = self.directory / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.directory / SINGLE_FILE).is_file():
            weight_map = None
        else:
            raise MarcoError(f"{self.directory}: no {SINGLE_FILE} or {INDEX_FILE}")
        self._stack = contextlib.ExitStack()
        self._file_of: dict[str, object] = {}
        files = sorted(set(weight_map.values())) if weight_map else [SINGLE_FILE]
        for name in files:
            path = self.directory / name
            try:
                handle = self._stack.enter_context(safe_open(str(path), framework="numpy"))
            except (SafetensorError, OSError) as e:
                self._stack.close()
                raise MarcoError(f"{path}: unreadable safetensors file ({e})") from None
            for key in handle.keys():
                self._file_of[key] = (handle, path)

    def __exit__(self, *exc):
        self._stack.close()

    def names(self) -> set[str]:
        return set(self._file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        handle, _ = self._file_of[name]
        return tuple(handle.get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        handle, path = self._file_of[name]
        try:
            return handle.get_tensor(name)
        except SafetensorError as e:
            raise MarcoError(f"{path}: cannot read tensor {name} ({e})") from None


def plan_shards(sizes: Sequence[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Group tensors, in order, into shards of at most ``max_shard_bytes`` (one
    tensor larger than that gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, nbytes in sizes:
        if shards[-1] and used + nbytes > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards


def write_safetensors(directory: pathlib.Path, sizes: Sequence[tuple[str, int]],
                      fetch: Callable[[str], np.ndarray], max_shard_bytes: int,
                      on_tensor: Callable[[str], None] = lambda name: None) -> None:
    """Write tensors as HF safetensors shards (+ index when more than one)."""
    shards = plan_shards(sizes, max_shard_bytes)
    weight_map, total = {}, 0
    for i, names in enumerate(shards, start=1):
        filename = SINGLE_FILE if len(shards) == 1 else (
            f"model-{i:05d}-of-{len(shards):05d}.safetensors")
        tensors = {}
        for name in names:
            tensors[name] = fetch(name)
            total += tensors[name].nbytes
            weight_map[name] = filename
            on_tensor(name)
        save_file(tensors, str(directory / filename), metadata={"format": "pt"})
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2))


def copy_tokenizer_files(src: pathlib.Path, dst: pathlib.Path) -> list[str]:
    """Copy whichever tokenizer files ``src`` has; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied
