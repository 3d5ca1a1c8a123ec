"""The one-writer lock: a second holder is refused with the first's pid, the lock goes
with its holder's death (no stale lock after a kill), and its file with the release."""

import os
import signal
import subprocess
import sys

import pytest

from marco_jax import run_lock
from marco_jax.errors import MarcoError


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    path = tmp_path / "out.jsonl.lock"
    with run_lock.held(path, "out.jsonl"):
        with pytest.raises(MarcoError, match=rf"out.jsonl is in use by another job: pid "
                                             rf"{os.getpid()} on \S+ holds .*out.jsonl.lock"):
            with run_lock.held(path, "out.jsonl"):
                pass
    assert not path.exists()
    with run_lock.held(path, "out.jsonl"):
        assert path.read_text().split()[0] == str(os.getpid())


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    path = tmp_path / "run" / "run.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, pathlib; from marco_jax import run_lock\n"
         f"with run_lock.held(pathlib.Path({str(path)!r}), 'run'):\n"
         "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(MarcoError, match=f"pid {holder.pid} "):
            with run_lock.held(path, "run"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert path.exists()  # the killed holder could not remove it, yet it holds nothing
    with run_lock.held(path, "run"):
        pass


def test_lock_path_is_beside_the_file(tmp_path):
    assert run_lock.lock_path(tmp_path / "o.jsonl") == tmp_path / "o.jsonl.lock"
