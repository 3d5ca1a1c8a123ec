"""Shared command-line plumbing: bad input becomes one line on stderr and exit 2;
compiled programs are kept on disk between runs."""

from __future__ import annotations

import os
import pathlib
import sys
from typing import Callable

import jax

from marco_jax.errors import MarcoError

CACHE_ENV = "MARCO_JAX_COMPILATION_CACHE"
DEFAULT_CACHE = pathlib.Path.home() / ".cache" / "marco-jax" / "xla"


def enable_compilation_cache() -> None:
    """Use JAX's persistent compilation cache (``$MARCO_JAX_COMPILATION_CACHE``, default
    ~/.cache/marco-jax/xla; empty: off), so that a rerun, a resumed job or the next method
    of an evaluation does not compile every engine and train step program again."""
    path = os.environ.get(CACHE_ENV, str(DEFAULT_CACHE))
    if path:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))


def run(main: Callable[[], int | None]) -> None:
    """Call ``main``; a :class:`MarcoError` prints ``error: ...`` without a traceback."""
    enable_compilation_cache()
    try:
        code = main()
    except MarcoError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
