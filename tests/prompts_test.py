"""ChatML / Marco-o1 prompt rendering and extraction of <Thought>/<Output>."""

from __future__ import annotations

import pytest

from marco_jax.prompts import (
    DEFAULT_SYSTEM,
    MARCO_SYSTEM_PROMPT,
    chat_prompt,
    chatml,
    extract_output,
    extract_thought,
    marco_prompt,
)


def test_chatml_exact_string():
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
    ]
    assert chatml(messages) == (
        "<|im_start|>system\nS<|im_end|>\n"
        "<|im_start|>user\nU<|im_end|>\n"
        "<|im_start|>assistant\nA<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chatml_without_generation_prompt():
    messages = [{"role": "user", "content": "U"}]
    assert chatml(messages, add_generation_prompt=False) == "<|im_start|>user\nU<|im_end|>\n"


def test_chatml_of_nothing():
    assert chatml([]) == "<|im_start|>assistant\n"
    assert chatml([], add_generation_prompt=False) == ""


def test_chat_prompt_uses_qwen2_default_system():
    assert DEFAULT_SYSTEM == "You are a helpful assistant."
    assert chat_prompt("你好") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chat_prompt_without_system():
    assert chat_prompt("hi", system=None) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_marco_system_prompt_asks_for_thought_and_output():
    assert "Marco-o1" in MARCO_SYSTEM_PROMPT
    assert "<Thought>内完成" in MARCO_SYSTEM_PROMPT
    assert "<Output>内输出你的结果" in MARCO_SYSTEM_PROMPT
    assert MARCO_SYSTEM_PROMPT.startswith("\n你是一个经过良好训练的AI助手")
    assert MARCO_SYSTEM_PROMPT.endswith("用户输入的语言。\n        ")


def test_marco_prompt_matches_marco_o1_chat_template():
    # What Marco-o1's tokenizer_config.json chat_template renders for one user turn.
    expected = (
        f"<|im_start|>system\n{MARCO_SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\nHow many r in strawberry?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert marco_prompt("How many r in strawberry?") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<Thought>think</Thought><Output> 42 </Output>", "42"),
        ("<Thought>t</Thought>\n<Output>\nfirst\n</Output><Output>second</Output>", "second"),
        ("<Output>a <Output>b</Output> c</Output>", "b"),
        ("<Thought>long reasoning</Thought><Output>truncated answ", "truncated answ"),
        ("<Output>done</Output> trailing chatter", "done"),
        ("<Thought>just thinking</Thought>\n  the answer is 7 ", "the answer is 7"),
        ("<Thought>a</Thought> b </Thought> c", "c"),
        ("  no tags at all  ", "no tags at all"),
        ("<Thought>unfinished reasoning", "<Thought>unfinished reasoning"),
        ("<Output></Output>", ""),
        ("", ""),
        ("<Thought>先算一下。</Thought><Output>答案是：**3**。</Output>", "答案是：**3**。"),
    ],
)
def test_extract_output(text, expected):
    assert extract_output(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<Thought>\n step 1 \n</Thought><Output>x</Output>", "step 1"),
        ("<Thought>未完成的思考", "未完成的思考"),
        ("<Thought>cut short<Output>answer", "cut short"),
        ("<Thought>first</Thought><Thought>second</Thought>", "first"),
        ("<Thought></Thought><Output>x</Output>", ""),
        ("<Output>no thought</Output>", None),
        ("", None),
    ],
)
def test_extract_thought(text, expected):
    assert extract_thought(text) == expected
