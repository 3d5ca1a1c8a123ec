"""Checkpoint conversions: HF safetensors -> Orbax, GGUF -> Orbax, Orbax -> HF.

Tensors keep their stored dtype (HF <-> Orbax is bit-exact); GGUF tensors are
dequantized to float32. Each conversion holds at most one copy of the model.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from tqdm import tqdm

from marco_jax.checkpoint import gguf_io, orbax_io, safetensors_io
from marco_jax.checkpoint.names import tensor_specs
from marco_jax.checkpoint.tensors import iter_tensors
from marco_jax.model_config import load_hf_config
from marco_jax.errors import MarcoError

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3


def hf_to_orbax(src: pathlib.Path, dst: pathlib.Path) -> None:
    orbax_io.require_empty(dst)
    if not safetensors_io.is_hf_checkpoint(src):
        raise MarcoError(f"{src}: not an HF checkpoint directory (config.json + "
                         "model.safetensors[.index.json])")
    cfg = load_hf_config(src / "config.json")
    with safetensors_io.SafetensorsReader(src) as reader:
        tensors = iter_tensors(reader, cfg, str(src), desc="hf -> orbax")
        orbax_io.save(dst, cfg, ((spec.key, t) for spec, t in tensors))
    safetensors_io.copy_tokenizer_files(src, dst)


def gguf_to_orbax(src: pathlib.Path, dst: pathlib.Path) -> None:
    orbax_io.require_empty(dst)
    with gguf_io.GGUFReader(src) as reader:
        cfg = reader.config()
        tensors = iter_tensors(reader, cfg, str(src), desc="gguf -> orbax")
        orbax_io.save(dst, cfg, ((spec.key, t) for spec, t in tensors))
    gguf_io.load_tokenizer(src).save_pretrained(str(dst))


def orbax_to_hf(src: pathlib.Path, dst: pathlib.Path,
                max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    orbax_io.require_empty(dst)
    if not orbax_io.is_orbax_checkpoint(src):
        raise MarcoError(f"{src}: not a marco-jax Orbax checkpoint (config.json + params/)")
    cfg = load_hf_config(src / "config.json")
    specs = tensor_specs(cfg)
    stored = orbax_io.check_shapes(src, {spec.key: spec.shape for spec in specs})
    dst.mkdir(parents=True, exist_ok=True)
    hf_config = cfg.to_hf_dict() | {"torch_dtype": str(stored[specs[0].key][1])}
    (dst / "config.json").write_text(json.dumps(hf_config, indent=2))
    by_name = {spec.hf_name: spec for spec in specs}
    sizes = [(s.hf_name, int(np.prod(s.shape)) * stored[s.key][1].itemsize) for s in specs]
    with tqdm(total=len(specs), desc="orbax -> hf", unit="tensor", leave=False) as bar:

        def fetch(names: list[str]) -> dict[str, np.ndarray]:
            """One shard's tensors, restored from Orbax and laid out as HF's."""
            bar.update(len(names))
            shard = [by_name[name] for name in names]
            target = orbax_io.nest({s.key: np.empty(*stored[s.key]) for s in shard})
            ours = orbax_io.flatten(orbax_io.restore(src, target))
            return {s.hf_name: s.to_hf(ours.pop(s.key)) for s in shard}

        safetensors_io.write_safetensors(dst, sizes, fetch, max_shard_bytes)
    safetensors_io.copy_tokenizer_files(src, dst)
