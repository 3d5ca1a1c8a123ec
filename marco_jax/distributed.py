"""Joining a multi-process (multi-host) run before JAX starts its backends: on TPU VMs
(and under SLURM, Kubernetes or MPI) peers are found automatically; anywhere else (e.g.
CPU processes standing for hosts) they are given, and CPU processes talk through gloo.
Processes that work apart (a search job's hosts, each on its own problems) meet through
the coordination service, and a process that fails tells the others.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import time
from typing import Iterator

# The coordination service's client: JAX has no public barrier that waits without a
# timeout and without a collective over every device (Orbax uses this client too).

from marco_jax.errors import MarcoError

_KEY = "marco_jax"
_meetings = itertools.count()


def add_args(parser: argparse.ArgumentParser) -> None:
    """The options that join a multi-process run, alike in every tool."""
    group = parser.add_argument_group("multi-host")
    group.add_argument("--distributed", action="store_true",
                       help="join a multi-process run with jax.distributed.initialize() "
                            "(peers auto-detected on TPU VMs)")
    group.add_argument("--coordinator", metavar="HOST:PORT",
                       help="process 0's address, where the environment does not say it")
    group.add_argument("--num-processes", type=int, metavar="N",
                       help="with --coordinator: how many processes join")
    group.add_argument("--process-id", type=int, metavar="I",
                       help="with --coordinator: this process's index, 0 to N-1")


def asked(args: argparse.Namespace) -> bool:
    """Whether ``add_args``' options ask to join a run (any of them does)."""
    return args.distributed or any(v is not None for v in
                                   (args.coordinator, args.num_processes, args.process_id))


def join(args: argparse.Namespace) -> bool:
    """Join the run that ``add_args``' options ask for, if any; whether one was joined."""
    if asked(args):
        initialize(args.coordinator, args.num_processes, args.process_id)
    return asked(args)


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
    import jax

    if coordinator is not None or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    except (ValueError, RuntimeError) as e:
        raise MarcoError(f"--distributed: {str(e).splitlines()[0]} (outside TPU VMs and "
                         "clusters JAX detects, pass --coordinator, --num-processes and "
                         "--process-id)") from e


def _client():
    """The coordination service's client of a joined run, else None. JAX is imported
    here, not at the top, so that a tool's ``--help`` does not wait for it."""
    if "jax" not in sys.modules:
        return None  # nothing joined a run
    from jax._src import distributed as jax_distributed
    return jax_distributed.global_state.client


class PeerFailed(MarcoError):
    """Another process reported failing: this one stops too, with its message."""


def meet(name: str, poll_s: float = 1.0) -> None:
    """Wait until every process of the run has come here, however long the slowest takes
    (hosts finish their shares of a job at different times): a key per process in the
    coordination service, polled, so neither a timeout nor the devices are involved. A
    failure another process reported stops the wait. Without a joined run: returns."""
    client = _client()
    if client is None:
        return
    import jax

    here = f"{_KEY}/meet/{next(_meetings)}-{name}"
    client.key_value_set(f"{here}/{jax.process_index()}", "")
    while len(client.key_value_dir_get(here)) < jax.process_count():
        failed = sorted(client.key_value_dir_get(f"{_KEY}/failed"))
        if failed:
            key, message = failed[0]
            raise PeerFailed(f"process {key.rsplit('/', 1)[1]} stopped before {name!r}: "
                             f"{message}")
        time.sleep(poll_s)


@contextlib.contextmanager
def failures_reported() -> Iterator[None]:
    """Tell the other processes when this one fails, so that they stop at their next
    ``meet`` with its message instead of waiting there for it."""
    try:
        yield
    except PeerFailed:
        raise
    except BaseException as e:
        client = _client()
        if client is not None:
            import jax

            with contextlib.suppress(Exception):  # the service may be what failed
                client.key_value_set(f"{_KEY}/failed/{jax.process_index()}",
                                     (str(e).splitlines() or [type(e).__name__])[0],
                                     allow_overwrite=True)
        raise
