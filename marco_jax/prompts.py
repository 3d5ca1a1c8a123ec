"""Prompt rendering (Qwen2 ChatML, Marco-o1) and Marco-o1's answer tags.

Rendering is plain Python rather than a tokenizer's jinja template so that the
exact prompt string is fixed by this code, whichever checkpoint is loaded.
"""

from __future__ import annotations

DEFAULT_SYSTEM = "You are a helpful assistant."

# Marco-o1's default system prompt, verbatim (leading newline and 8-space lines included),
# from the chat_template of https://huggingface.co/AIDC-AI/Marco-o1 (which the AIDC-AI/Marco-o1
# scripts use through apply_chat_template); checked character for character against
# ms-swift (MarcoO1TemplateMeta.default_system) and chatllm.cpp (marco_o1 sys_prompt).
MARCO_SYSTEM_PROMPT = (
    "\n"
    "你是一个经过良好训练的AI助手，你的名字是Marco-o1.由阿里国际数字商业集团的AI Business创造.\n"
    "        \n"
    "## 重要！！！！！\n"
    "当你回答问题时，你的思考应该在<Thought>内完成，<Output>内输出你的结果。\n"
    "<Thought>应该尽可能是英文，但是有2个特例，一个是对原文中的引用，"
    "另一个是是数学应该使用markdown格式，<Output>内的输出需要遵循用户输入的语言。\n"
    "        "
)

# System prompts a training config may name (``data.system``).
SYSTEM_PROMPTS: dict[str, str | None] = {
    "marco": MARCO_SYSTEM_PROMPT, "default": DEFAULT_SYSTEM, "none": None}

THOUGHT_OPEN, THOUGHT_CLOSE = "<Thought>", "</Thought>"
OUTPUT_OPEN, OUTPUT_CLOSE = "<Output>", "</Output>"


def chatml(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """Render messages as Qwen2 ChatML, optionally opening the assistant's turn."""
    turns = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        turns.append("<|im_start|>assistant\n")
    return "".join(turns)


def chat_prompt(user: str, system: str | None = DEFAULT_SYSTEM) -> str:
    """A single-turn prompt; ``system=None`` omits the system message."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": user})
    return chatml(messages)


def marco_prompt(user: str) -> str:
    """The prompt Marco-o1's own chat template builds for a single user turn."""
    return chat_prompt(user, system=MARCO_SYSTEM_PROMPT)


def render(template: str, user: str) -> str:
    """A question in a search config's template: Marco-o1's system prompt
    ("marco"), plain ChatML ("chat") or the bare text ("none")."""
    if template == "marco":
        return marco_prompt(user)
    if template == "chat":
        return chat_prompt(user)
    return user
