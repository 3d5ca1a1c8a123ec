"""Reading our own text files (JSON Lines, paths that may be remote) in one place,
so that every reader splits lines alike."""

from __future__ import annotations

from etils import epath



def absolute(path: epath.PathLike) -> epath.Path:
    """``path`` as Orbax wants it: a local path made absolute, a remote one (``gs://...``)
    unchanged (``epath.Path.absolute`` would prefix it with the working directory)."""
    path = epath.Path(path)
    return path if "://" in str(path) else path.absolute()


def lines(text: str) -> list[str]:
    """Split on "\\n" only: JSON written with ensure_ascii=False may hold U+2028 or
    U+0085 inside strings, which ``str.splitlines`` would break apart."""
    return text.rstrip("\n").split("\n") if text else []
