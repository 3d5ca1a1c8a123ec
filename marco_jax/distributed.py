"""Joining a multi-process (multi-host) run before JAX starts its backends: on TPU VMs
(and under SLURM, Kubernetes or MPI) peers are found automatically; anywhere else (e.g.
CPU processes standing for hosts) they are given, and CPU processes talk through gloo.
"""

from __future__ import annotations

import os

import jax

from marco_jax.errors import MarcoError


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join the run: auto-detected when nothing is given, else as given (all three)."""
    given = {"--coordinator": coordinator, "--num-processes": num_processes,
             "--process-id": process_id}
    if any(v is not None for v in given.values()):
        missing = [flag for flag, v in given.items() if v is None]
        if missing:
            raise MarcoError(f"a manual multi-process run needs {', '.join(missing)} too "
                             "(e.g. --coordinator 127.0.0.1:12345 --num-processes 2 "
                             "--process-id 0)")
        if not 0 <= process_id < num_processes:
            raise MarcoError(f"--process-id {process_id}: must be in [0, {num_processes})")
    if coordinator is not None or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    except (ValueError, RuntimeError) as e:
        raise MarcoError(f"--distributed: {str(e).splitlines()[0]} (outside TPU VMs and "
                         "clusters JAX detects, pass --coordinator, --num-processes and "
                         "--process-id)") from e
