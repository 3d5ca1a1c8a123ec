"""Training configs: named files, --set overrides, and errors that name the key."""

import dataclasses

import pytest

from marco_jax.errors import MarcoError
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
    ("dpo.label_smoothing=0.5", "dpo.label_smoothing must be >= 0 and < 0.5"),
    ("dpo.reference=frozen", "dpo.reference must be precomputed or live"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(MarcoError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_train_config("tiny_sft", [override])


def test_unknown_config_lists_the_known_ones():
    with pytest.raises(MarcoError, match="known: qwen2_05b_dpo, qwen2_05b_sft, qwen2_7b_dpo, qwen2_7b_dpo_v5e8, qwen2_7b_sft, qwen2_7b_sft_v5e8, tiny_dpo, tiny_sft"):
        load_train_config("qwen3")
