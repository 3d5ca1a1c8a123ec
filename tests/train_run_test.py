"""Whole SFT runs on the tiny config: kill and resume (metrics logged once per step),
restore on another mesh, export to Hugging Face, bad configs, one run per output_dir, and
the dry-run memory plan."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import torch

from cli_test import ROOT, assert_one_line_error, run_script
from marco_jax import run_lock
from marco_jax.checkpoint.convert import orbax_to_hf
from marco_jax.errors import MarcoError
from marco_jax.loading import load
from marco_jax.train import trainer
from marco_jax.train.checkpoint import RunCheckpoints
from marco_jax.train.config import load_train_config

STEPS = 16


def write_data(path):
    records = [{"instruction": f"What is {i} + {i}?",
                "response": f"<Thought>{i} + {i} = {2 * i}</Thought><Output>{2 * i}</Output>"}
               for i in range(40)]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def settings(tmp_path, out, *extra):
    return [f"output_dir={tmp_path / out}", f"data.path={tmp_path / 'data.jsonl'}",
            f"train.steps={STEPS}", "checkpoint.every=2", "checkpoint.keep=3",
            "data.seq_len=128", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """An uninterrupted run: (tmp dir, its config, its per-step losses)."""
    tmp_path = tmp_path_factory.mktemp("train")
    write_data(tmp_path / "data.jsonl")
    cfg = load_train_config("tiny_sft", settings(tmp_path, "a"))
    logged = trainer.train(cfg, progress=False)
    return tmp_path, cfg, {m["step"]: m["loss"] for m in logged}


def test_loss_goes_down_and_metrics_are_written(finished_run):
    tmp_path, cfg, losses = finished_run
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert np.mean([losses[s] for s in (15, 16)]) < losses[1] - 0.5
    lines = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_s", "mfu"} <= set(lines[0])
    assert list((tmp_path / "a" / "tensorboard").iterdir())
    kept = sorted(int(p.name) for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert kept == [12, 14, 16]


def kill_after_checkpoint(config: str, overrides: list[str], checkpoints, step: int) -> int:
    """Run scripts/train.py, SIGKILL it once checkpoint ``step`` exists, and return
    the latest checkpoint it left."""
    args = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", config,
            "--no-progress"]
    for item in overrides:
        args += ["--set", item]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    deadline = time.time() + 180
    while not (checkpoints / str(step)).is_dir() and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert saved, proc.stderr.read().decode()[-2000:]
    return max(saved)


def test_killed_run_resumes_with_the_same_losses(finished_run):
    tmp_path, _, losses = finished_run
    last = kill_after_checkpoint("tiny_sft", settings(tmp_path, "b"),
                                 tmp_path / "b" / "checkpoints", 4)
    assert last < STEPS

    metrics = tmp_path / "b" / "metrics.jsonl"
    with open(metrics, "a") as f:  # what a kill leaves: steps past the checkpoint, torn
        f.write(json.dumps({"step": last + 1, "loss": 9.0}) + "\n" + '{"step": ')
    cfg = load_train_config("tiny_sft", settings(tmp_path, "b"))
    with pytest.raises(MarcoError, match="--resume"):
        trainer.train(cfg, progress=False)
    resumed = trainer.train(cfg, resume=True, progress=False)
    assert resumed[0]["step"] == last + 1
    assert {m["step"]: m["loss"] for m in resumed} == {
        s: l for s, l in losses.items() if s > last}
    logged = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [m["step"] for m in logged] == list(range(1, STEPS + 1))
    assert {m["step"]: m["loss"] for m in logged if m["step"] > last} == {
        s: l for s, l in losses.items() if s > last}


def test_checkpoint_restores_on_another_mesh(finished_run):
    tmp_path, cfg, _ = finished_run
    saved = RunCheckpoints(tmp_path / "a" / "checkpoints", 2, 3)
    other = load_train_config("tiny_sft", settings(tmp_path, "a", "mesh.fsdp=2",
                                                   "mesh.tensor=2"))
    states = []
    for config, devices in ((cfg, jax.devices()), (other, jax.devices()[:4])):
        setup = trainer.set_up(config, devices)
        data = iter(trainer.sft_batches(config, trainer.run_tokenizer(config)))
        states.append(saved.restore(16, setup.program.abstract_state, data))
    saved.close()
    assert states[1].params["embed_vd"].sharding.mesh.shape["tensor"] == 2
    assert int(states[1].step) == 16
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_export_loads_in_transformers(finished_run, tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir, _, _ = finished_run
    orbax_to_hf(run_dir / "a" / "final", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    ours = load(run_dir / "a" / "final").model
    tokens = np.arange(3, 40, dtype=np.int32)[None]
    with torch.no_grad():
        expected = hf(torch.tensor(tokens)).logits.numpy()
    got = ours(tokens, np.arange(tokens.shape[1])[None])
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=0)


def test_bad_config_and_data_are_one_line_errors(tmp_path):
    proc = run_script("train.py", "--config", "tiny_sft", "--set", "train.learnig_rate=1")
    assert_one_line_error(proc, "learnig_rate")
    proc = run_script("train.py", "--config", "tiny_sft", "--set", "train.steps=many")
    assert_one_line_error(proc, "steps must be int")
    (tmp_path / "bad.jsonl").write_text('{"instruction": "hi", "response": "yo"}\n{oops\n')
    proc = run_script("train.py", "--config", "tiny_sft", "--set",
                      f"data.path={tmp_path / 'bad.jsonl'}", "--set",
                      f"output_dir={tmp_path / 'out'}")
    assert_one_line_error(proc, "bad.jsonl:2")
    assert not (tmp_path / "out" / "checkpoints").exists()  # nothing saved, no folder
    proc = run_script("train.py", "--config", "nope")
    assert_one_line_error(proc, "no training config 'nope'")


def test_a_second_run_on_one_output_dir_stops_naming_the_holder(tmp_path):
    write_data(tmp_path / "data.jsonl")
    with run_lock.held(tmp_path / "c" / "run.lock", "the first run"):
        proc = run_script("train.py", "--config", "tiny_sft", "--no-progress",
                          *(f"--set={item}" for item in settings(tmp_path, "c")))
        assert proc.returncode == 2
        assert_one_line_error(proc, f"output_dir {tmp_path / 'c'} is in use by another job: "
                                    f"pid {os.getpid()} ")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == []


def test_dry_run_plans_memory_without_allocating():
    proc = run_script("train.py", "--config", "tiny_sft", "--dry-run", "--simulate-devices", "4",
                      "--mesh", "fsdp=2,tensor=2")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["devices"] == 4 and plan["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
    params = plan["params"] * 4  # fp32
    assert params / 4 <= plan["param_bytes"] < params
    assert plan["optimizer_bytes"] >= 2 * plan["param_bytes"]
    assert plan["total_bytes"] >= plan["param_bytes"] + plan["optimizer_bytes"]


def test_init_from_any_checkpoint_format_gives_config_and_tokenizer(hf_checkpoint):
    _, path = hf_checkpoint
    for init_from in (str(path), "builtin:tiny"):
        cfg = load_train_config("tiny_sft", [f"model.init_from={init_from}", "data.tokenizer="])
        assert trainer.model_config_of(cfg).vocab_size == 512
        assert trainer.model_config_of(cfg).compute_dtype == "float32"
        assert trainer.run_tokenizer(cfg).encode("hi", add_special_tokens=False)
