"""Grading generated answers: extraction, comparison and the ground-truth
verifiers, in one place so that a record, a reward, the tree page and the data
export never disagree about an answer.

Final numeric answers from free-form math solutions (MGSM, English and Chinese):
small models state their answer in many ways: ``\\boxed{18}``, a Marco-o1
``<Output>`` section, "The answer is 18.", "答案是 18", an invented
```` ```output ```` block after some Python, or just a last number, often with
``$``, units, thousands commas or LaTeX around it, and sometimes in a loop cut
off mid-number. :func:`extract_answer` picks the most explicit statement and
spells the number canonically, so that :func:`answers_match` can compare it to
the gold answer and :func:`majority_answer` can count votes across samples.

Verifiers (whether a generation's answer equals the gold one; Marco-o1 v2
builds its training data from answers checked this way, reward 1 or 0) must
never be fooled by a number elsewhere in the reasoning: each reads the final
answer region first (an ``<answer>`` or ``<Output>`` section, then
``\\boxed{}``), and so does :func:`final_answer`, the answer a record states:

- ``numeric``: :func:`extract_answer` against the gold number (GSM8K, MGSM):
  "1,234", "-3", "2.50" and "\\boxed{3/4}" all work.
- ``letter_count``: the same, and a spelled count ("three") is read too.
- ``exact``: the final answer region equals the gold text after trimming,
  case folding, collapsing spaces and dropping a trailing full stop.
"""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction
from typing import Callable

from marco_jax.errors import MarcoError

# A minus sign counts unless it follows an ASCII letter, digit or closing bracket:
# "x = -3" and "答案是-3" are negative, "10-3" is not.
# Thousands commas need exact groups of three, so "1, 2" and "1,2345" stay two numbers.
# "a/b" with no spaces is one number (a fraction), as in "\boxed{3/4}".
_NUMBER = re.compile(
    r"(?P<sign>(?<![0-9A-Za-z_)\]}])-)?"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?)"
    r"(?:/(?P<den>\d+(?:\.\d+)?))?"
)
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([\d.,]+)\s*\}\s*\{\s*([\d.,]+)\s*\}")
_THIN_SPACE_THOUSANDS = re.compile(r"(?<=\d)\\,(?=\d{3}(?!\d))")
_OUTPUT_TAG = re.compile(r"<Output>", re.IGNORECASE)
_OUTPUT_END = re.compile(r"</Output>", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{")
_MARKER = re.compile(r"answer\s+is\b\s*[:：]?|answer\**\s*[:：]|答案\s*(?:是|为|[:：])", re.IGNORECASE)
_OUTPUT_BLOCK = re.compile(r"```output[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_answer(text: str) -> str | None:
    """The final answer as a canonical number string ("1234", "2.5", "-3"), or None.

    Tried in order, the first that holds a number wins: the last ``<Output>``
    section (then only searched inside, with the rules below), the last
    ``\\boxed{...}`` with a number, the line after the last "Answer:" /
    "answer is" / "答案是" marker, the last ```` ```output ```` block, and
    finally the last number anywhere. Within the chosen region the last number
    is taken.
    """
    text = _drop_cut_off_number(_untex(text))
    tags = list(_OUTPUT_TAG.finditer(text))
    if tags:
        section = text[tags[-1].end():]
        end = _OUTPUT_END.search(section)
        return _answer_in(section[:end.start()] if end else section)
    return _answer_in(text)


def answers_match(predicted: str | None, gold: str) -> bool:
    """Whether ``predicted`` equals ``gold`` (e.g. "1,234") within 1e-6 relative.

    A gold answer that is not a number is a bad data set, so it raises
    :class:`MarcoError` instead of scoring every prediction wrong.
    """
    gold_value = _parse(gold)
    if gold_value is None:
        raise MarcoError(f"gold answer {gold!r} is not a number")
    value = None if predicted is None else _parse(predicted)
    return value is not None and abs(value - gold_value) <= Fraction(1, 10**6) * abs(gold_value)


def majority_answer(answers: list[str | None]) -> str | None:
    """The most common non-None answer; a tie goes to the one seen first, so runs repeat.

    Answers are compared as strings, so pass the canonical ones from
    :func:`extract_answer`.
    """
    counts = Counter(a for a in answers if a is not None)
    # Counter keeps first-seen order and max() returns the first maximum.
    return max(counts, key=counts.__getitem__) if counts else None


def _untex(text: str) -> str:
    """Rewrite LaTeX number spellings as plain ones: "\\frac{3}{4}" → "3/4", "1{,}234" → "1,234"."""
    text = text.replace("−", "-").replace("{,}", ",")
    text = _THIN_SPACE_THOUSANDS.sub(",", text)
    return _FRAC.sub(r"\1/\2", text)


def _drop_cut_off_number(text: str) -> str:
    """Drop a number that a generation loop was cut off in ("... is 18.\\nThe answer is 1").

    If the text ends in two copies of a unit that starts before its last
    number, it is looping, and the earlier copy holds the complete number.
    Dropping the last one lets the rules below find that copy instead.
    """
    last = None
    for last in _NUMBER.finditer(text):
        pass
    if last is None or last.end() != len(text):
        return text
    for period in range(len(text) - last.start() + 1, len(text) // 2 + 1):
        if text[-2 * period:-period] == text[-period:]:
            return text[:last.start()]
    return text


def _answer_in(region: str) -> str | None:
    """Apply the boxed / marker / output-block / last-number rules to one region."""
    for content in reversed(_boxed_contents(region)):
        if (answer := _last_number(content)) is not None:
            return answer
    markers = list(_MARKER.finditer(region))
    if markers:
        # Only the first non-blank line after the marker: models often ramble on
        # (or start the next question) after stating the answer.
        line = region[markers[-1].end():].lstrip().split("\n", 1)[0]
        if (answer := _last_number(line)) is not None:
            return answer
    blocks = _OUTPUT_BLOCK.findall(region)
    if blocks and (answer := _last_number(blocks[-1])) is not None:
        return answer
    return _last_number(region)


def _boxed_contents(text: str) -> list[str]:
    """The inside of every closed ``\\boxed{...}``, nested braces included, in order.

    An unclosed box at the end of a cut-off generation is skipped: its number may be cut too.
    """
    contents = []
    for match in _BOXED.finditer(text):
        depth = 1
        for i in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                contents.append(text[match.end():i])
                break
    return contents


def _last_number(text: str) -> str | None:
    """The last number in ``text``, spelled canonically, or None."""
    matches = list(_NUMBER.finditer(text))
    return _format(_value(matches[-1])) if matches else None


def _parse(text: str) -> Fraction | None:
    """The value of a string that is exactly one number ("1,234", "-2.5", "3/4"), else None."""
    match = _NUMBER.fullmatch(text.strip())
    return _value(match) if match else None


def _value(match: re.Match[str]) -> Fraction:
    """Exact value of a :data:`_NUMBER` match, so "0.1 + 0.2"-style float noise never decides a match."""
    value = Fraction(match["num"].replace(",", ""))
    if match["den"] is not None and Fraction(match["den"]) != 0:  # "5/0" is no fraction: read 5
        value /= Fraction(match["den"])
    return -value if match["sign"] else value


def _format(value: Fraction) -> str:
    """One spelling per value, so equal answers compare and vote as equal strings.

    "18.0" → "18", "2.50" → "2.5"; repeating decimals are cut at 10 places ("1/3" → "0.3333333333").
    """
    value = round(value, 10)
    if value.denominator == 1:
        return str(value.numerator)
    whole, decimals = divmod(int(abs(value) * 10**10), 10**10)
    sign = "-" if value < 0 else ""
    return f"{sign}{whole}.{decimals:010d}".rstrip("0")


_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.DOTALL | re.IGNORECASE)
_OUTPUT_SECTION = re.compile(r"<Output>(.*?)(?:</Output>|\Z)", re.DOTALL | re.IGNORECASE)
_BOXED_TEXT = re.compile(r"\\boxed\{([^{}]*)\}")
_COUNT_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                "fourteen fifteen sixteen seventeen eighteen nineteen twenty").split()
_COUNT_WORD = re.compile(r"\b(" + "|".join(_COUNT_WORDS) + r")\b", re.IGNORECASE)


def final_region(text: str) -> str:
    """The part of a generation that states the final answer: the last
    ``<answer>`` section, else the last ``<Output>`` section, else the whole text."""
    for tag in (_ANSWER_TAG, _OUTPUT_SECTION):
        sections = tag.findall(text)
        if sections:
            return sections[-1]
    return text


def final_answer(text: str) -> str | None:
    """The number a generation states as its answer: :func:`extract_answer` of its
    :func:`final_region` (what records, votes and the numeric verifier use)."""
    return extract_answer(final_region(text))


def same_answer(chosen: str, gold: str) -> bool:
    """Whether two stated answers agree: as numbers when both are numbers (within
    1e-6 relative), else as texts after :func:`exact`'s normalisation (a gold
    answer need not be a number here: the tree page shows any search)."""
    if _parse(gold) is not None:
        return answers_match(chosen, gold)
    return _normal(chosen) == _normal(gold)


def numeric(text: str, gold: str) -> bool:
    return answers_match(final_answer(text), gold)


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
    boxed = _BOXED_TEXT.findall(region)
    return _normal(boxed[-1] if boxed else region) == _normal(gold)


VERIFIERS: dict[str, Callable[[str, str], bool]] = {
    "numeric": numeric, "letter_count": letter_count, "exact": exact}


def verifier(name: str) -> Callable[[str, str], bool]:
    """The verifier called ``name``; an unknown name is an error listing the known ones."""
    if name not in VERIFIERS:
        raise MarcoError(f"unknown verifier {name!r} (known: {', '.join(VERIFIERS)})")
    return VERIFIERS[name]
