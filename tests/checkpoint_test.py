"""Checkpoint conversion: HF <-> Orbax bit-exactness, GGUF import, bad inputs."""

import json
import os
import pathlib
import stat
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from marco_jax.checkpoint import convert, gguf_io, safetensors_io
from marco_jax.errors import MarcoError
from marco_jax.loading import load
from marco_jax.tokenizer import builtin_tokenizer
from model_test import hf_logits, ours, random_tokens

GGUF_LAYER_NAMES = {hf: g for g, hf in gguf_io._LAYER_NAMES.items()}
GGUF_GLOBAL_NAMES = {hf: g for g, hf in gguf_io._GLOBAL_NAMES.items()}


def read_all_safetensors(directory: pathlib.Path) -> dict[str, np.ndarray]:
    tensors = {}
    for f in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def test_hf_orbax_hf_round_trip_is_bit_exact(hf_checkpoint, tmp_path):
    hf_model, src = hf_checkpoint
    convert.hf_to_orbax(src, tmp_path / "orbax")
    convert.orbax_to_hf(tmp_path / "orbax", tmp_path / "hf", max_shard_bytes=40_000)
    before, after = read_all_safetensors(src), read_all_safetensors(tmp_path / "hf")
    assert len(list((tmp_path / "hf").glob("*.safetensors"))) > 1  # sharded, with index
    before.pop("lm_head.weight", None) if hf_model.config.tie_word_embeddings else None
    assert sorted(before) == sorted(after)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype, name
        np.testing.assert_array_equal(after[name], tensor, err_msg=name)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tokens = random_tokens((1, 12))
    np.testing.assert_array_equal(hf_logits(reloaded, tokens), hf_logits(hf_model, tokens))
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").encode("hi") == [104, 105]


def test_orbax_checkpoint_loads_to_same_logits(hf_checkpoint, tmp_path):
    _, src = hf_checkpoint
    convert.hf_to_orbax(src, tmp_path / "orbax")
    loaded = load(tmp_path / "orbax")
    assert loaded.source_format == "orbax"
    tokens = random_tokens((2, 10))
    np.testing.assert_array_equal(ours(loaded.model, tokens), ours(load(src).model, tokens))
    assert loaded.tokenizer.encode("hi") == [104, 105]


def write_gguf(hf_model, path: pathlib.Path, quantize: bool) -> pathlib.Path:
    """A Qwen2 GGUF file as llama.cpp writes it: large matrices Q8_0, the rest F32."""
    cfg = hf_model.config
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    vocab = builtin_tokenizer().get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    tokens.append("ĠĠ")  # one merge: GGUF readers need a non-empty merge list
    tokens += [f"<|extra_{i}|>" for i in range(cfg.vocab_size - len(tokens))]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 256 + [3] * (len(tokens) - 256))
    writer.add_token_merges(["Ġ Ġ"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_bos_token_id(vocab["<|endoftext|>"])
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                             "{{ m['content'] }}<|im_end|>\n{% endfor %}")
    for name, tensor in hf_model.state_dict().items():
        array = tensor.numpy()
        if name.startswith("model.layers."):
            layer, rest = name[len("model.layers."):].split(".", 1)
            gguf_name = f"blk.{layer}.{GGUF_LAYER_NAMES[rest]}"
        elif name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        else:
            gguf_name = GGUF_GLOBAL_NAMES[name]
        if quantize and array.ndim == 2:
            q = gguf.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, q, raw_shape=q.shape,
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("quantize", [False, True], ids=["f32", "q8_0"])
def test_gguf_import_matches_transformers(hf_checkpoint, tmp_path, quantize):
    hf_model, _ = hf_checkpoint
    path = write_gguf(hf_model, tmp_path / "tiny.gguf", quantize)
    from transformers import AutoModelForCausalLM
    reference = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    loaded = load(path)
    assert loaded.source_format == "gguf"
    assert loaded.cfg.tie_word_embeddings == hf_model.config.tie_word_embeddings
    tokens = random_tokens((2, 16))
    np.testing.assert_allclose(ours(loaded.model, tokens), hf_logits(reference, tokens),
                               atol=1e-4, rtol=0)
    if not quantize:  # exact weights: also equal to the original model
        np.testing.assert_allclose(ours(loaded.model, tokens), hf_logits(hf_model, tokens),
                                   atol=1e-4, rtol=0)
    convert.gguf_to_orbax(path, tmp_path / "orbax")
    from_orbax = load(tmp_path / "orbax")
    np.testing.assert_array_equal(ours(from_orbax.model, tokens), ours(loaded.model, tokens))
    assert from_orbax.tokenizer.decode(from_orbax.tokenizer.encode("héllo")) == "héllo"


def test_gguf_tokenizer_equals_transformers_and_needs_no_torch(hf_checkpoint, tmp_path):
    """The tokenizer built from GGUF metadata is transformers' own (the same merges,
    specials and chat template), read without torch: ``--model demo`` on a fresh
    install, which has no torch, needs it."""
    from transformers import AutoTokenizer

    path = write_gguf(hf_checkpoint[0], tmp_path / "tiny.gguf", quantize=False)
    ours = gguf_io.load_tokenizer(path)
    reference = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in ("héllo  wörld", "<|im_start|>user\n2 + 2?<|im_end|>", "a\n\n\tb  "):
        assert ours.encode(text) == reference.encode(text)
        assert ours.decode(ours.encode(text)) == reference.decode(reference.encode(text))
    assert ours.get_vocab() == reference.get_vocab()
    assert (ours.eos_token_id, ours.bos_token_id) == (reference.eos_token_id,
                                                      reference.bos_token_id)
    chat = [{"role": "user", "content": "hi"}]
    assert ours.apply_chat_template(chat, tokenize=False) == \
        reference.apply_chat_template(chat, tokenize=False)
    no_torch = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['torch'] = None\n"
         "from marco_jax.checkpoint import gguf_io\n"
         f"print(gguf_io.load_tokenizer(__import__('pathlib').Path({str(path)!r})).encode('hi'))"],
        capture_output=True, text=True, timeout=120)
    assert no_torch.returncode == 0, no_torch.stderr
    assert no_torch.stdout.strip() == str(ours.encode("hi"))


def test_shape_mismatch_names_tensor_and_shapes(hf_checkpoint, tmp_path):
    _, src = hf_checkpoint
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").symlink_to(src / "model.safetensors")
    with pytest.raises(MarcoError, match=r"model.layers.0.mlp.gate_proj.weight has shape "
                                         r"\(128, 64\), config expects \(96, 64\)"):
        load(bad, with_tokenizer=False)


def test_conversion_refuses_non_empty_destination(hf_checkpoint, tmp_path):
    _, src = hf_checkpoint
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(MarcoError, match="not empty"):
        convert.hf_to_orbax(src, tmp_path / "out")


@pytest.mark.parametrize("max_shard_bytes", [1000, 12], ids=["one-file", "sharded"])
def test_written_safetensors_get_the_mode_of_any_new_file(tmp_path, max_shard_bytes):
    """safetensors writes 0600; an exported checkpoint is read by others like its config."""
    old = os.umask(0o022)
    try:
        safetensors_io.write_safetensors(
            tmp_path, [("a", 12), ("b", 12)],
            lambda names: {name: np.zeros(3, np.float32) for name in names}, max_shard_bytes)
        (tmp_path / "config.json").write_text("{}")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert len(modes) == (2 if max_shard_bytes == 1000 else 4)
    assert set(modes.values()) == {0o644}, modes
