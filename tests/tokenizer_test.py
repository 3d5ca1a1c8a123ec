"""The built-in byte-level tokenizer and checkpoint tokenizer loading."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from marco_jax.errors import MarcoError
from marco_jax.prompts import chat_prompt, chatml
from marco_jax.tokenizer import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    builtin_tokenizer,
    load_tokenizer,
)

TINY_MODEL_VOCAB = 512

TEXTS = [
    "",
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n and  double  spaces . , ?",
    "你好，世界！思考一下：1+1=2。",
    "emoji 🤖🧠 and accents: naïve café",
    "\x00\x01 control bytes \x7f",
]


@pytest.fixture(scope="module")
def tokenizer():
    return builtin_tokenizer()


def test_vocab_fits_the_tiny_model(tokenizer):
    assert len(tokenizer) == 259
    assert len(tokenizer) < TINY_MODEL_VOCAB


@pytest.mark.parametrize("text", TEXTS)
def test_round_trips_text(tokenizer, text):
    token_ids = tokenizer.encode(text)
    assert tokenizer.decode(token_ids) == text


def test_plain_text_ids_are_utf8_bytes(tokenizer):
    text = "Marco 你好"
    assert tokenizer.encode(text) == list(text.encode("utf-8"))


@pytest.mark.parametrize("special_token", [ENDOFTEXT, IM_START, IM_END])
def test_special_tokens_encode_to_single_ids(tokenizer, special_token):
    (token_id,) = tokenizer.encode(special_token)
    assert token_id >= 256
    assert tokenizer.decode([token_id]) == special_token


def test_special_tokens_inside_text(tokenizer):
    token_ids = tokenizer.encode(f"{IM_START}user\nhi{IM_END}")
    assert token_ids[0] == tokenizer.convert_tokens_to_ids(IM_START)
    assert token_ids[-1] == tokenizer.convert_tokens_to_ids(IM_END)
    assert len(token_ids) == 2 + len("user\nhi")


def test_eos_and_pad(tokenizer):
    assert tokenizer.eos_token == IM_END
    assert tokenizer.pad_token == ENDOFTEXT
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    assert tokenizer.decode(tokenizer.encode(f"hi{IM_END}"), skip_special_tokens=True) == "hi"


def test_chat_template_matches_plain_chatml(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
    ]
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert rendered == chatml(messages)


def test_chat_template_adds_qwen2_default_system(tokenizer):
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == chat_prompt("hi")


def test_save_and_reload(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    for reloaded in (AutoTokenizer.from_pretrained(str(tmp_path)), load_tokenizer(tmp_path)):
        assert len(reloaded) == len(tokenizer)
        assert reloaded.eos_token == IM_END
        assert reloaded.pad_token == ENDOFTEXT
        assert reloaded.chat_template == tokenizer.chat_template
        for text in TEXTS:
            assert reloaded.encode(text) == tokenizer.encode(text)
            assert reloaded.decode(reloaded.encode(text)) == text


def test_load_missing_directory_names_it(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(MarcoError, match="no-such-checkpoint"):
        load_tokenizer(missing)


def test_load_directory_without_tokenizer_files_names_it(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MarcoError, match="no tokenizer files") as raised:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(raised.value)


def test_load_corrupt_tokenizer_is_wrapped(tmp_path):
    (tmp_path / "tokenizer.json").write_text("not json")
    (tmp_path / "tokenizer_config.json").write_text("{ broken")
    with pytest.raises(MarcoError, match="cannot load tokenizer") as raised:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(raised.value)
