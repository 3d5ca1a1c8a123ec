"""Reading our own text files: JSON Lines split safely, named JSON configs, and
paths that may be remote.

Shared by search jobs, SFT data, generation prompts and run configs, so that
every JSONL reader splits lines the same way and every named config reports a
missing name with the list of known ones.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from etils import epath

from marco_jax.errors import MarcoError

# Named configs ship inside the package (package data), so any install has them.
CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"


def absolute(path: epath.PathLike) -> epath.Path:
    """``path`` as Orbax wants it: a local path made absolute, a remote one
    (``gs://...``) unchanged (``epath.Path.absolute`` would prefix it with the
    working directory)."""
    path = epath.Path(path)
    return path if "://" in str(path) else path.absolute()


def lines(text: str) -> list[str]:
    """Split on "\\n" only: JSON written with ensure_ascii=False may hold U+2028 or
    U+0085 inside strings, which ``str.splitlines`` would break apart."""
    return text.rstrip("\n").split("\n") if text else []


def named_config(name_or_path: str, kind: str, what: str) -> tuple[pathlib.Path, dict[str, Any]]:
    """The JSON of ``marco_jax/configs/<kind>/NAME.json`` (or of a path) and where it came from;
    ``what`` names the kind of config in errors."""
    directory = CONFIGS / kind
    path = pathlib.Path(name_or_path)
    if not path.suffix:
        path = directory / f"{name_or_path}.json"
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.json"))
        raise MarcoError(f"no {what} config {name_or_path!r} (known: {', '.join(known)})")
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MarcoError(f"{path}: not valid JSON ({e})") from None
