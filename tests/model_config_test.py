"""Reading HF configs: supported fields map over, unsupported features are refused."""

import json
import re

import pytest

from marco_jax.model_config import PRESETS, from_hf_dict, load_hf_config, preset
from marco_jax.errors import MarcoError
from conftest import TINY_HF_CONFIG, build_hf_model

BASE = dict(TINY_HF_CONFIG, model_type="qwen2")


def test_hf_config_fields_map_over():
    cfg = from_hf_dict(BASE | {"tie_word_embeddings": False, "eos_token_id": [7, 8]})
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (2, 4, 2, 16)
    assert cfg.rope_theta == 10_000.0 and cfg.eos_token_ids == (7, 8)
    assert not cfg.tie_word_embeddings


def test_rope_theta_from_rope_parameters():
    cfg = from_hf_dict(BASE | {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})
    assert cfg.rope_theta == 5e5


@pytest.mark.parametrize("change, message", [
    ({"use_sliding_window": True}, "sliding-window"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "RoPE scaling of type 'yarn'"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4}}, "'linear'"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"model_type": "llama"}, "model_type='llama'"),
    ({"num_key_value_heads": 3}, "not a multiple"),
])
def test_unsupported_features_are_errors(change, message):
    with pytest.raises(MarcoError, match=message):
        from_hf_dict(BASE | change)


def test_missing_field_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 8}))
    with pytest.raises(MarcoError, match="missing field.*hidden_size"):
        load_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(MarcoError, match="not valid JSON"):
        load_hf_config(tmp_path)


@pytest.mark.parametrize("tied", [True, False])
def test_num_params_matches_hf(tied):
    hf = build_hf_model(tied)
    cfg = from_hf_dict(hf.config.to_dict())
    assert cfg.num_params() == sum(p.numel() for p in hf.parameters())


def test_presets():
    assert PRESETS["qwen2-7b"].num_params() == pytest.approx(7.6e9, rel=0.01)
    assert PRESETS["qwen2-0.5b"].num_params() == pytest.approx(0.49e9, rel=0.02)
    with pytest.raises(MarcoError, match="unknown model preset"):
        preset("qwen9")


def test_to_hf_dict_round_trips():
    cfg = PRESETS["qwen2-7b"]
    assert from_hf_dict(cfg.to_hf_dict()) == cfg


def test_architectures_say_which_model_a_config_is():
    """Without model_type, a Llama config holds every field a Qwen2 one needs."""
    untyped = {k: v for k, v in BASE.items() if k != "model_type"}
    assert from_hf_dict(untyped | {"architectures": ["Qwen2ForCausalLM"]}) == from_hf_dict(BASE)
    for architectures in (["LlamaForCausalLM"], ["Qwen2ForCausalLM", "LlamaForCausalLM"],
                          "Qwen2ForCausalLM"):
        with pytest.raises(MarcoError, match=re.escape(
                f"c.json: architectures={architectures!r} is not supported by marco-jax, "
                "which reads Qwen2ForCausalLM checkpoints")):
            from_hf_dict(untyped | {"architectures": architectures}, "c.json")
