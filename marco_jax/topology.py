"""The accelerators a run is planned for: each TPU generation's published figures, and
compile-only TPU devices of any topology (libtpu's ahead-of-time compiler needs no TPU),
on which ``jax.jit(...).lower(...).compile()`` gives the TPU compiler's memory plan and
cost analysis: a pod run is sized from a laptop or a CPU VM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Any, Iterator

from marco_jax.errors import MarcoError

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One chip's published figures (Google Cloud's TPU pages); ``hbm_bytes`` is what
    the TPU compiler itself allows a program (its out-of-memory message names it)."""

    name: str
    peak_flops: float  # bf16 dense FLOP/s
    hbm_bytes: int
    hbm_bandwidth: float  # bytes/s
    ici_bandwidth: float  # bytes/s a chip sends over all its ICI links


# device_kind -> Chip. ICI: v5e 1,600 Gbit/s, v5p 4,800, v6e 3,584 per chip.
CHIPS = {
    "TPU v5 lite": Chip("v5e", 197e12, int(15.75 * GIB), 819e9, 200e9),
    "TPU v5": Chip("v5p", 459e12, int(95.74 * GIB), 2765e9, 600e9),
    "TPU v6 lite": Chip("v6e", 918e12, int(31.25 * GIB), 1640e9, 448e9),
}


def chip_of(device_kind: str) -> Chip | None:
    """The figures of a device kind; None where we have none (CPU, GPU, older TPUs)."""
    return CHIPS.get(device_kind)


def tpu_devices(topology: str, slices: int = 1) -> list[Any]:
    """Compile-only devices of ``slices`` slices of a TPU ``topology`` (e.g. ``v5e:2x4``),
    ordered by slice; an error naming what to install where libtpu is missing."""
    if slices < 1:
        raise MarcoError(f"--topology-slices {slices}: must be >= 1")
    # Compile-only use of libtpu touches no chip: let it load beside other processes
    # that hold libtpu's lock file (a training run, a parallel test worker).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        with _without_stderr():  # libtpu's start-up warns that this host has no TPU
            description = topologies.get_topology_desc(
                platform="tpu", topology_name=topology,
                **({"num_slices": slices} if slices > 1 else {}))
    except RuntimeError as e:  # jax.errors.JaxRuntimeError too
        text = str(e).splitlines()[0]
        if "TPU support not installed" in text:
            raise MarcoError(
                "--topology needs libtpu, the TPU compiler, which runs on any host: "
                "pip install -e '.[tpu]' (jax[tpu] of the installed jax version)") from e
        raise MarcoError(f"--topology {topology!r}: {text} (a TPU topology is e.g. v5e:2x4, "
                         "v5p:2x2x2 or v6e:4x4, filling whole hosts)") from e
    devices = list(description.devices)
    if not devices:
        raise MarcoError(f"--topology {topology!r}: no devices")
    return sorted(devices, key=lambda d: (getattr(d, "slice_index", 0) or 0, d.id))


@contextlib.contextmanager
def _without_stderr() -> Iterator[None]:
    """Drop what C++ code writes to file descriptor 2 inside the block (errors still
    arrive as Python exceptions)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def slice_count(devices: list[Any]) -> int:
    """How many slices (separate ICI domains, joined by the data-centre network) hold
    ``devices``; devices without a slice index (CPU, GPU) are one slice."""
    return len({getattr(d, "slice_index", 0) or 0 for d in devices})
