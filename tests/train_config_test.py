"""Training configs: named files, --set overrides, and errors that name the key."""

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from cli_test import ROOT, assert_one_line_error, run_script
from marco_jax.errors import MarcoError
from marco_jax.run_config import CONFIGS
from marco_jax.train.config import load_train_config


def test_named_configs_load_and_overrides_apply():
    cfg = load_train_config("qwen2_7b_sft", ["train.learning_rate=2e-5", "mesh.fsdp=8",
                                             "model.init_from=ckpt/qwen2-7b", "train.clip_norm=2"])
    assert cfg.model.preset == "qwen2-7b" and cfg.data.seq_len == 4096 and cfg.model.remat == "full"
    assert cfg.train.learning_rate == 2e-5 and cfg.mesh.fsdp == 8
    assert cfg.model.init_from == "ckpt/qwen2-7b" and cfg.train.clip_norm == 2.0
    assert isinstance(cfg.train.clip_norm, float)
    assert dataclasses.asdict(cfg)["train"]["global_batch"] == 64
    for name in ("qwen2_05b_sft", "tiny_sft"):
        assert load_train_config(name).name == name


@pytest.mark.parametrize("override, message", [
    ("train.learnig_rate=1", "unknown key(s) learnig_rate"),
    ("trian.steps=1", "unknown key(s) trian"),
    ("train.steps=many", "steps must be int, got 'many'"),
    ("model.remat=1", "remat must be str"),
    ("model.remat=some", "model.remat must be one of none, full, dots"),
    ("train.optimizer=sgd", "train.optimizer must be adamw or adafactor"),
    ("train.moments_dtype=float16", "train.moments_dtype must be float32 or bfloat16"),
    ("train.micro_batches=3", "multiple of train.micro_batches"),
    ("data.overlong=cut", "data.overlong must be truncate or drop"),
    ("steps", "expected section.key=value"),
    ("objective=ppo", "objective must be sft or dpo"),
    ("dpo.loss=hinge", "dpo.loss must be sigmoid or ipo"),
    ("dpo.reference=frozen", "dpo.reference must be precomputed or live"),
    # Numbers outside their declared range name the override, its key, value and range.
    ("train.learning_rate=-0.003", "--set train.learning_rate=-0.003: learning_rate must be "
                                   "> 0, got -0.003"),
    ("train.learning_rate=Infinity", "learning_rate must be a finite number > 0, got inf"),
    ("train.steps=0", "--set train.steps=0: steps must be >= 1, got 0"),
    ("train.global_batch=-8", "global_batch must be >= 1, got -8"),
    ("train.micro_batches=0", "micro_batches must be >= 1, got 0"),
    ("train.warmup_steps=-1", "warmup_steps must be >= 0, got -1"),
    ("train.b2=1", "b2 must be in [0, 1), got 1.0"),
    ("train.clip_norm=0", "clip_norm must be > 0, got 0.0"),
    ("data.num_epochs=0", "--set data.num_epochs=0: num_epochs must be >= 1, got 0"),
    ("dpo.beta=-0.1", "--set dpo.beta=-0.1: beta must be > 0, got -0.1"),
    ("dpo.label_smoothing=0.5", "label_smoothing must be in [0, 0.5), got 0.5"),
    ("checkpoint.keep=0", "keep must be >= 1, got 0"),
    ("mesh.tensor=-2", "tensor must be >= -1, got -2"),
    ("mesh.tensor=0", "mesh.tensor must be >= 1 or -1 (every remaining device), got 0"),
    ("train.min_learning_rate=0.1", "train.min_learning_rate (0.1) must be <= "
                                    "train.learning_rate"),
    ("train.learnig_rate=1", "--set train.learnig_rate=1: unknown key(s) learnig_rate"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(MarcoError, match=re.escape(message)):
        load_train_config("tiny_sft", [override])


def test_a_bad_value_in_a_file_names_the_file(tmp_path):
    raw = json.loads((CONFIGS / "train" / "tiny_sft.json").read_text())
    raw["train"]["learning_rate"] = -0.003
    (tmp_path / "mine.json").write_text(json.dumps(raw))
    with pytest.raises(MarcoError, match=re.escape(
            f"{tmp_path / 'mine.json'} [train]: learning_rate must be > 0, got -0.003")):
        load_train_config(str(tmp_path / "mine.json"))
    # An override that puts it right is read in place of the file's value.
    cfg = load_train_config(str(tmp_path / "mine.json"), ["train.learning_rate=0.003"])
    assert cfg.train.learning_rate == 0.003


def test_configs_built_in_code_are_range_checked():
    cfg = load_train_config("tiny_sft")
    bad = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, learning_rate=-1.0))
    with pytest.raises(MarcoError, match=re.escape(
            "config tiny_sft: train.learning_rate must be > 0, got -1.0")):
        bad.validate()


def test_train_cli_names_the_override():
    proc = run_script("train.py", "--config", "tiny_sft", "--set", "train.learning_rate=-0.003")
    assert_one_line_error(proc, "error: --set train.learning_rate=-0.003: learning_rate must "
                                "be > 0, got -0.003")


def test_unknown_config_lists_the_known_ones():
    with pytest.raises(MarcoError, match="known: qwen2_05b_dpo, qwen2_05b_sft, qwen2_7b_dpo, qwen2_7b_dpo_v5e8, qwen2_7b_sft, qwen2_7b_sft_v5e8, tiny_dpo, tiny_sft"):
        load_train_config("qwen3")


def test_a_relative_data_path_in_a_file_is_relative_to_the_file(tmp_path, monkeypatch):
    shipped = load_train_config("tiny_sft").data.path
    assert shipped == str(CONFIGS / "train" / "data" / "cot_demo_24.json")
    records = json.loads(pathlib.Path(shipped).read_text(encoding="utf-8"))
    assert 24 <= len(records) <= 32 and all(set(r) == {"instruction", "response"} for r in records)
    raw = json.loads((CONFIGS / "train" / "tiny_sft.json").read_text())
    (tmp_path / "cfg").mkdir()
    for path in ("mine.jsonl", "/abs/data.jsonl", "gs://bucket/data.jsonl", ""):
        raw["data"]["path"] = path
        (tmp_path / "cfg" / "mine.json").write_text(json.dumps(raw))
        monkeypatch.chdir(tmp_path)  # the config named relative to the working directory
        got = load_train_config("cfg/mine.json").data.path
        assert got == (str(tmp_path / "cfg" / "mine.jsonl") if path == "mine.jsonl" else path)
    # An override is relative to the working directory, as any command-line path.
    assert load_train_config("tiny_sft", ["data.path=data.jsonl"]).data.path == "data.jsonl"


def test_tiny_sft_trains_from_any_directory(tmp_path):
    """Its shipped data is found wherever the command runs; output_dir stays relative to it."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", "tiny_sft",
         "--no-progress", "--set", "train.steps=1", "--set", "data.seq_len=64",
         "--set", "checkpoint.async_save=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cot_demo_24.json: 24 examples" in proc.stderr
    metrics = (tmp_path / "results" / "train" / "tiny_sft" / "metrics.jsonl").read_text()
    assert [json.loads(line)["step"] for line in metrics.splitlines()] == [1]
