"""Two processes on localhost stand for two hosts (``jax.distributed``, gloo
collectives, two CPU devices each): a tiny SFT run that is killed after a
checkpoint, resumed and exported gives the losses and the exported weights of a
one-process run on the same (fsdp=4) mesh, and finishes well inside two minutes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from cli_test import ROOT
from marco_jax.checkpoint.convert import orbax_to_hf
from marco_jax.loading import load
from marco_jax.scoring import score
from train_run_test import write_data

STEPS = 8
TEXT = "What is 12 + 30? <Thought>12 + 30 = 42</Thought><Output>42</Output>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(tmp_path, out: str, *extra: str) -> list[str]:
    args = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", "tiny_sft",
            "--no-progress", *extra]
    for item in (f"output_dir={tmp_path / out}", f"data.path={tmp_path / 'data.jsonl'}",
                 f"train.steps={STEPS}", "checkpoint.every=2", "checkpoint.keep=2",
                 "data.seq_len=128", "mesh.fsdp=4"):
        args += ["--set", item]
    return args


def env(devices: int) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def launch_pair(tmp_path, out: str, *extra: str) -> list[subprocess.Popen]:
    port = free_port()
    return [subprocess.Popen(
        command(tmp_path, out, *extra, "--coordinator", f"127.0.0.1:{port}",
                "--num-processes", "2", "--process-id", str(i)),
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{out}-{i}.log", "ab"), env=env(2))
        for i in range(2)]


def logs(tmp_path, out: str) -> str:
    return "\n".join((tmp_path / f"{out}-{i}.log").read_text()[-1500:] for i in range(2))


def losses(run_dir) -> dict[int, float]:
    """Per step, the last loss logged (a resumed run logs again what the killed one
    logged after its last checkpoint)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {m["step"]: m["loss"] for m in map(json.loads, lines)}


def test_two_process_run_is_killed_resumed_and_exported_like_one_process(tmp_path):
    write_data(tmp_path / "data.jsonl")
    subprocess.run(command(tmp_path, "one"), check=True, env=env(4),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    expected = losses(tmp_path / "one")
    assert sorted(expected) == list(range(1, STEPS + 1))

    start = time.perf_counter()
    checkpoints = tmp_path / "two" / "checkpoints"
    pair = launch_pair(tmp_path, "two")
    deadline = time.time() + 120
    while not (checkpoints / "4").is_dir() and time.time() < deadline \
            and all(p.poll() is None for p in pair):
        time.sleep(0.01)
    for p in pair:
        p.send_signal(signal.SIGKILL)
        p.wait()
    saved = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert saved and max(saved) < STEPS, logs(tmp_path, "two")
    assert not (tmp_path / "two" / "final").exists()

    pair = launch_pair(tmp_path, "two", "--resume")
    codes = [p.wait(timeout=120) for p in pair]
    elapsed = time.perf_counter() - start
    assert codes == [0, 0], logs(tmp_path, "two")
    assert f"resumed from step {max(saved)}" in logs(tmp_path, "two")
    assert elapsed < 120, f"two-process run took {elapsed:.0f} s"

    got = losses(tmp_path / "two")
    assert sorted(got) == list(range(1, STEPS + 1))
    for step, loss in expected.items():
        assert abs(got[step] - loss) <= 1e-6, (step, got[step], loss)

    scores = []
    for run in ("one", "two"):
        hf = tmp_path / f"{run}-hf"
        orbax_to_hf(tmp_path / run / "final", hf)
        loaded = load(str(hf))
        scores.append(score(loaded.model, loaded.tokenizer.encode(TEXT)).logprobs)
    np.testing.assert_allclose(scores[1], scores[0], atol=1e-6, rtol=0)
