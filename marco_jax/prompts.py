"""Prompt rendering (Qwen2 ChatML, Marco-o1) and parsing of Marco-o1's tagged answers.

Rendering is plain Python rather than a tokenizer's jinja template so that the
exact prompt string is fixed by this code, whichever checkpoint is loaded.
"""

from __future__ import annotations

DEFAULT_SYSTEM = "You are a helpful assistant."

# Marco-o1's default system prompt, verbatim (including the leading newline and
# the 8-space lines). Source: the chat_template in tokenizer_config.json of the
# released checkpoint, https://huggingface.co/AIDC-AI/Marco-o1 ; the AIDC-AI/Marco-o1
# GitHub scripts (src/talk_with_model_vllm.py, src/tools/infer/vllm_fastapi.py)
# rely on that template via apply_chat_template. Cross-checked character for
# character against ms-swift (swift/llm/template/template/qwen.py,
# MarcoO1TemplateMeta.default_system) and chatllm.cpp (marco_o1 sys_prompt).
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
    turns = [
        f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n"
        for message in messages
    ]
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


def extract_output(text: str) -> str:
    """The final answer: the last ``<Output>`` block, tolerating truncation.

    Generation may stop before ``</Output>`` (length limit), so an unclosed block
    runs to the end. Without any ``<Output>``, fall back to whatever follows the
    last ``</Thought>``, else the whole text.
    """
    _, output_open, answer = text.rpartition(OUTPUT_OPEN)
    if output_open:
        return answer.partition(OUTPUT_CLOSE)[0].strip()
    _, thought_close, after_thought = text.rpartition(THOUGHT_CLOSE)
    return (after_thought if thought_close else text).strip()


def extract_thought(text: str) -> str | None:
    """The reasoning inside the first ``<Thought>`` block, or None if there is none.

    An unclosed block ends where ``<Output>`` begins, or at the end of the text.
    """
    _, thought_open, thought = text.partition(THOUGHT_OPEN)
    if not thought_open:
        return None
    thought = thought.partition(THOUGHT_CLOSE)[0]
    return thought.partition(OUTPUT_OPEN)[0].strip()
