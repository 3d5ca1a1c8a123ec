"""Ground-truth verifiers: whether a generated answer equals the problem's gold
answer. Marco-o1 v2 builds its training data from search trees whose answer
nodes are checked this way (reward 1 or 0), so a verifier must never be
fooled by a number elsewhere in the reasoning: each reads the final answer
region first (an ``<answer>`` or ``<Output>`` section, then ``\\boxed{}``).

- ``numeric``: :func:`marco_jax.answers.extract_answer` against the gold
  number (GSM8K, MGSM): "1,234", "-3", "2.50" and "\\boxed{3/4}" all work.
- ``letter_count``: the same, and a spelled count ("three") is read too.
- ``exact``: the final answer region equals the gold text after trimming,
  case folding, collapsing spaces and dropping a trailing full stop.
"""

from __future__ import annotations

import re
from typing import Callable

from marco_jax.answers import answers_match, extract_answer
from marco_jax.errors import MarcoError

_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.DOTALL | re.IGNORECASE)
_OUTPUT_TAG = re.compile(r"<Output>(.*?)(?:</Output>|\Z)", re.DOTALL | re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_COUNT_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                "fourteen fifteen sixteen seventeen eighteen nineteen twenty").split()
_COUNT_WORD = re.compile(r"\b(" + "|".join(_COUNT_WORDS) + r")\b", re.IGNORECASE)


def final_region(text: str) -> str:
    """The part of a generation that states the final answer: the last
    ``<answer>`` section, else the last ``<Output>`` section, else the whole text."""
    for tag in (_ANSWER_TAG, _OUTPUT_TAG):
        sections = tag.findall(text)
        if sections:
            return sections[-1]
    return text


def numeric(text: str, gold: str) -> bool:
    return answers_match(extract_answer(final_region(text)), gold)


def letter_count(text: str, gold: str) -> bool:
    region = final_region(text)
    if numeric(region, gold):
        return True
    if re.search(r"\d", region):  # a stated number wins over a word in the prose
        return False
    words = _COUNT_WORD.findall(region)
    return bool(words) and answers_match(str(_COUNT_WORDS.index(words[-1].lower())), gold)


def _normal(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(".").strip()


def exact(text: str, gold: str) -> bool:
    region = final_region(text)
    boxed = _BOXED.findall(region)
    return _normal(boxed[-1] if boxed else region) == _normal(gold)


VERIFIERS: dict[str, Callable[[str, str], bool]] = {
    "numeric": numeric, "letter_count": letter_count, "exact": exact}


def verifier(name: str) -> Callable[[str, str], bool]:
    """The verifier called ``name``; an unknown name is an error listing the known ones."""
    if name not in VERIFIERS:
        raise MarcoError(f"unknown verifier {name!r} (known: {', '.join(VERIFIERS)})")
    return VERIFIERS[name]
