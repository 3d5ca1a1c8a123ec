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
from marco_jax.config import load_hf_config
from marco_jax.errors import MarcoError

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3


def _require_empty(dst: pathlib.Path) -> None:
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise MarcoError(f"{dst}: destination exists and is not empty")


def hf_to_orbax(src: pathlib.Path, dst: pathlib.Path) -> None:
    _require_empty(dst)
    if not safetensors_io.is_hf_checkpoint(src):
        raise MarcoError(f"{src}: not an HF checkpoint directory (config.json + "
                         "model.safetensors[.index.json])")
    cfg = load_hf_config(src / "config.json")
    with safetensors_io.SafetensorsReader(src) as reader:
        tensors = iter_tensors(reader, cfg, str(src), desc="hf -> orbax")
        orbax_io.save(dst, cfg, ((spec.key, t) for spec, t in tensors))
    safetensors_io.copy_tokenizer_files(src, dst)


def gguf_to_orbax(src: pathlib.Path, dst: pathlib.Path) -> None:
    _require_empty(dst)
    with gguf_io.GGUFReader(src) as reader:
        cfg = reader.config()
        tensors = iter_tensors(reader, cfg, str(src), desc="gguf -> orbax")
        orbax_io.save(dst, cfg, ((spec.key, t) for spec, t in tensors))
    gguf_io.load_tokenizer(src).save_pretrained(str(dst))


def orbax_to_hf(src: pathlib.Path, dst: pathlib.Path,
                max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    _require_empty(dst)
    if not orbax_io.is_orbax_checkpoint(src):
        raise MarcoError(f"{src}: not a marco-jax Orbax checkpoint (config.json + params/)")
    cfg = orbax_io.load_config(src)
    specs = tensor_specs(cfg)
    stored = orbax_io.check_shapes(src, {spec.key: spec.shape for spec in specs})
    dst.mkdir(parents=True, exist_ok=True)
    hf_config = cfg.to_hf_dict()
    hf_config["torch_dtype"] = str(stored[specs[0].key][1])
    (dst / "config.json").write_text(json.dumps(hf_config, indent=2))
    by_name = {spec.hf_name: spec for spec in specs}

    def fetch(names: list[str]) -> dict:
        """One shard's tensors, restored from Orbax and laid out as HF's."""
        ours = orbax_io.restore_numpy(src, {by_name[n].key: stored[by_name[n].key] for n in names})
        return {n: by_name[n].to_hf(ours.pop(by_name[n].key)) for n in names}

    sizes = [(s.hf_name, int(np.prod(s.shape)) * stored[s.key][1].itemsize) for s in specs]
    with tqdm(total=len(specs), desc="orbax -> hf", unit="tensor", leave=False) as bar:
        safetensors_io.write_safetensors(dst, sizes, fetch, max_shard_bytes,
                                         on_shard=lambda names: bar.update(len(names)))
    safetensors_io.copy_tokenizer_files(src, dst)
