"""Model tensors one at a time: read from an HF or GGUF source, and grouped for writing.

Both sources speak HF tensor names; this module checks names and shapes
against :func:`names.tensor_specs` and yields each tensor in our layout, so
that callers (loading onto devices, conversion to Orbax) hold one at a time.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Protocol, TypeVar

import numpy as np
from tqdm import tqdm

from marco_jax.checkpoint.names import TensorSpec, tensor_specs
from marco_jax.model_config import Qwen2Config
from marco_jax.errors import MarcoError

T = TypeVar("T")
# Tensors HF checkpoints may carry that the model does not use.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class TensorSource(Protocol):
    def names(self) -> set[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def get(self, name: str) -> np.ndarray: ...


def require_shapes(where: str, expected: dict[str, tuple[int, ...]],
                   shape_of: Callable[[str], tuple[int, ...]]) -> None:
    """Name the first tensor whose stored shape (``shape_of``) is not the config's."""
    for name, shape in expected.items():
        if (found := shape_of(name)) != shape:
            raise MarcoError(f"{where}: tensor {name} has shape {found}, "
                             f"config expects {shape}")


def _some(names: list[str]) -> str:
    """The first five names, and how many more (errors stay one readable line)."""
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_names(source: TensorSource, cfg: Qwen2Config, where: str) -> list[TensorSpec]:
    """The specs to read; missing or unexpected tensors are an error naming them."""
    specs = tensor_specs(cfg)
    expected = {s.hf_name for s in specs}
    present = source.names()
    if missing := sorted(expected - present):
        raise MarcoError(f"{where}: missing tensor(s) {_some(missing)}")
    extra = sorted(n for n in present - expected if not n.endswith(_IGNORED_SUFFIXES))
    if cfg.tie_word_embeddings and "lm_head.weight" in extra:
        extra.remove("lm_head.weight")  # a tied head saved anyway: HF ignores it too
    if extra:
        raise MarcoError(f"{where}: unexpected tensor(s) {_some(extra)}")
    require_shapes(where, {s.hf_name: s.hf_shape for s in specs}, source.shape)
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


def batches(items: Iterable[T], nbytes: Callable[[T], int], limit: int) -> Iterator[list[T]]:
    """Consecutive items in groups of at most ``limit`` bytes (a larger item alone), so
    that a writer holds one group at a time."""
    group: list[T] = []
    used = 0
    for item in items:
        if group and used + nbytes(item) > limit:
            yield group
            group, used = [], 0
        group.append(item)
        used += nbytes(item)
    if group:
        yield group
