"""Tokenizers: the real one from a checkpoint, and a tiny built-in one with which tests
and demos run text -> ids -> text (ChatML included) offline against a tiny random model.
"""

from __future__ import annotations

import pathlib

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from marco_jax.errors import MarcoError

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

# Qwen2-Instruct's ChatML template: injects the default system prompt when the
# conversation has none, exactly like the released Qwen2 checkpoints.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Files whose presence means a directory carries a Hugging Face tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte value: printable Latin-1 bytes stand for
    themselves, the rest shift past 255 so that none maps to whitespace or a control."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), 256),
    ]
    unprintable = [byte for byte in range(256) if byte not in printable]
    symbols = {byte: chr(byte) for byte in printable}
    symbols |= {byte: chr(256 + rank) for rank, byte in enumerate(unprintable)}
    return [symbols[byte] for byte in range(256)]


def builtin_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte (id == byte value: any UTF-8 text encodes losslessly) and Qwen2's
    special tokens and chat template: small enough for the tiny model's vocab of 512."""
    vocab = {symbol: byte for byte, symbol in enumerate(_byte_symbols())}
    byte_level = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    byte_level.decoder = decoders.ByteLevel()
    byte_level.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = QWEN2_CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(directory: str | pathlib.Path) -> PreTrainedTokenizerBase:
    """Load a checkpoint's tokenizer, failing with one line that names the directory."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise MarcoError(f"tokenizer directory does not exist: {directory}")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise MarcoError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {directory}")
    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as error:
        raise MarcoError(f"cannot load tokenizer from {directory}: {error}") from error
