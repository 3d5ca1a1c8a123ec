"""ChatML / Marco-o1 prompt rendering."""

from __future__ import annotations

from marco_jax.prompts import (
    DEFAULT_SYSTEM,
    MARCO_SYSTEM_PROMPT,
    chat_prompt,
    chatml,
    marco_prompt,
    render,
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


def test_render_names_each_template():
    assert render("marco", "Q") == marco_prompt("Q")
    assert render("chat", "Q") == chat_prompt("Q")
    assert render("none", "Q") == "Q"
