"""One writer per job: an exclusive lock file (``flock``) that a search job holds on its
output and a training run on its directory, so that a second job on the same files stops
at once instead of interleaving its lines with the first's.

The kernel releases a ``flock`` when its holder dies, so a killed job leaves no stale
lock; the file holds the holder's pid and host only to name them in the error. On NFS,
Linux emulates ``flock`` with byte-range locks that every client sees.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import socket
from typing import Iterator

from marco_jax.errors import MarcoError


def _holder(path: pathlib.Path) -> str:
    """Who holds the lock, as its file says (``pid N on HOST``)."""
    with contextlib.suppress(OSError, ValueError):
        pid, host = path.read_text(encoding="utf-8").split()
        return f"pid {pid} on {host}"
    return "a process that has not written its pid yet"


def _acquire(path: pathlib.Path, what: str) -> int:
    """An open descriptor of ``path`` holding its lock. A lock taken on a file that its
    holder removed meanwhile (it was releasing) is let go and taken again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MarcoError(f"{what} is in use by another job: {_holder(path)} holds "
                             f"{path}") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)


@contextlib.contextmanager
def held(path: pathlib.Path, what: str) -> Iterator[None]:
    """Hold the lock file ``path`` (made, with its parents, if missing) for the block;
    :class:`MarcoError` naming ``what`` and the holder's pid if another process holds it.
    The file is removed on release."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, what)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # before the release: a waiter then sees a new file
        os.close(fd)


def lock_path(path: pathlib.Path) -> pathlib.Path:
    """The lock file of ``path``: beside it, ``NAME.lock``."""
    return path.with_name(path.name + ".lock")
