"""Read every model tensor from an HF or GGUF source, one tensor at a time.

Both sources speak HF tensor names; this module checks names and shapes
against :func:`names.tensor_specs` and yields each tensor in our layout, so
that callers (loading onto devices, conversion to Orbax) hold one at a time.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np
from tqdm import tqdm

from marco_jax.checkpoint.names import TensorSpec, tensor_specs
from marco_jax.config import Qwen2Config
from marco_jax.errors import MarcoError

# Tensors HF checkpoints may carry that the model does not use.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class TensorSource(Protocol):
    def names(self) -> set[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def get(self, name: str) -> np.ndarray: ...


def check_names(source: TensorSource, cfg: Qwen2Config, where: str) -> list[TensorSpec]:
    """The specs to read; missing or unexpected tensors are an error naming them."""
    specs = tensor_specs(cfg)
    expected = {s.hf_name for s in specs}
    present = source.names()
    missing = sorted(expected - present)
    if missing:
        raise MarcoError(f"{where}: missing tensor(s) {', '.join(missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    extra = sorted(n for n in present - expected if not n.endswith(_IGNORED_SUFFIXES))
    if cfg.tie_word_embeddings and "lm_head.weight" in extra:
        extra.remove("lm_head.weight")  # a tied head saved anyway: HF ignores it too
    if extra:
        raise MarcoError(f"{where}: unexpected tensor(s) {', '.join(extra[:5])}"
                         + (f" and {len(extra) - 5} more" if len(extra) > 5 else ""))
    for spec in specs:
        shape = source.shape(spec.hf_name)
        if shape != spec.hf_shape:
            raise MarcoError(f"{where}: tensor {spec.hf_name} has shape {shape}, "
                             f"config expects {spec.hf_shape}")
    return specs


def iter_tensors(source: TensorSource, cfg: Qwen2Config, where: str,
                 dtype: np.dtype | None = None, desc: str = "reading",
                 ) -> Iterator[tuple[TensorSpec, np.ndarray]]:
    """``(spec, tensor in our layout)`` for every tensor, read one at a time.

    ``dtype`` casts (None keeps the stored dtype, for bit-exact conversion).
    """
    for spec in tqdm(check_names(source, cfg, where), desc=desc, unit="tensor", leave=False):
        tensor = spec.to_ours(source.get(spec.hf_name))
        yield spec, tensor if dtype is None else tensor.astype(dtype, copy=False)
