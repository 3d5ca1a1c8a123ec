"""The training step's loops (layers, micro-batches, loss chunks, attention blocks),
rolled by default (short compiles, low memory) and unrolled inside :func:`unrolled`,
because the TPU compiler's cost analysis counts a loop body once however often it runs
and the step-time estimate (:mod:`marco_jax.train.estimate`) must count every iteration.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator

import jax

_UNROLL = contextvars.ContextVar("marco_jax_unroll", default=False)


@contextlib.contextmanager
def unrolled() -> Iterator[None]:
    """Loops traced inside this block are unrolled."""
    token = _UNROLL.set(True)
    try:
        yield
    finally:
        _UNROLL.reset(token)


def scan(body: Callable, init: Any, xs: Any, length: int | None = None) -> tuple[Any, Any]:
    """``jax.lax.scan``, unrolled inside :func:`unrolled`."""
    return jax.lax.scan(body, init, xs, length=length, unroll=True if _UNROLL.get() else 1)


def map(f: Callable, xs: Any) -> Any:  # noqa: A001 - the loop that jax.lax.map is
    """``jax.lax.map``, unrolled inside :func:`unrolled`."""
    return scan(lambda _, x: (None, f(x)), None, xs)[1]
