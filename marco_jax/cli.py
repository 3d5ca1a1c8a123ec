"""Shared command-line plumbing: bad input becomes one line on stderr and exit 2."""

from __future__ import annotations

import sys
from typing import Callable

from marco_jax.errors import MarcoError


def run(main: Callable[[], int | None]) -> None:
    """Call ``main``; a :class:`MarcoError` prints ``error: ...`` without a traceback."""
    try:
        code = main()
    except MarcoError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
