"""Checkpoint conversions: HF safetensors -> Orbax, GGUF -> Orbax, Orbax -> HF.

Tensors keep their stored dtype (HF <-> Orbax is bit-exact); GGUF tensors are
dequantized to float32. Each conversion holds at most one copy of the model.
"""

from __future__ import annotations

import json
import pathlib

from tqdm import tqdm

from marco_jax.checkpoint import gguf_io, orbax_io, safetensors_io
from marco_jax.checkpoint.names import tensor_specs
from marco_jax.checkpoint.tensors import read_tensors
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
        params = read_tensors(reader, cfg, str(src), lambda spec, t: t, desc="hf -> orbax")
    orbax_io.save(dst, cfg, orbax_io.nest(params))
    safetensors_io.copy_tokenizer_files(src, dst)


def gguf_to_orbax(src: pathlib.Path, dst: pathlib.Path) -> None:
    _require_empty(dst)
    with gguf_io.GGUFReader(src) as reader:
        cfg = reader.config()
        params = read_tensors(reader, cfg, str(src), lambda spec, t: t, desc="gguf -> orbax")
    orbax_io.save(dst, cfg, orbax_io.nest(params))
    del params
    gguf_io.load_tokenizer(src).save_pretrained(str(dst))


def orbax_to_hf(src: pathlib.Path, dst: pathlib.Path,
                max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    _require_empty(dst)
    if not orbax_io.is_orbax_checkpoint(src):
        raise MarcoError(f"{src}: not a marco-jax Orbax checkpoint (config.json + params/)")
    cfg = orbax_io.load_config(src)
    specs = tensor_specs(cfg)
    stored = orbax_io.stored_shapes(src)
    for spec in specs:
        if spec.key not in stored:
            raise MarcoError(f"{src}: tensor {spec.key} is missing")
        if stored[spec.key][0] != spec.shape:
            raise MarcoError(f"{src}: tensor {spec.key} has shape {stored[spec.key][0]}, "
                             f"config expects {spec.shape}")
    params = orbax_io.flatten(orbax_io.restore(src))
    dst.mkdir(parents=True, exist_ok=True)
    hf_config = cfg.to_hf_dict()
    hf_config["torch_dtype"] = str(stored[specs[0].key][1])
    (dst / "config.json").write_text(json.dumps(hf_config, indent=2))
    by_name = {spec.hf_name: spec for spec in specs}

    def fetch(name: str):
        spec = by_name[name]
        return spec.to_hf(params.pop(spec.key))  # drop our copy as each tensor is written

    sizes = [(s.hf_name, params[s.key].nbytes) for s in specs]
    with tqdm(total=len(specs), desc="orbax -> hf", unit="tensor", leave=False) as bar:
        safetensors_io.write_safetensors(dst, sizes, fetch, max_shard_bytes,
                                         on_tensor=lambda name: bar.update())
    safetensors_io.copy_tokenizer_files(src, dst)
