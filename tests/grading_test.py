"""Grading in one place: answer extraction on the kinds of text small models really
write for MGSM, the ground-truth verifiers on the spellings GSM8K, v2's tags and
small models produce, and the cases where the four graders of old disagreed."""

import pytest

from marco_jax.errors import MarcoError
from marco_jax.grading import (answers_match, extract_answer, final_answer, final_region,
                               majority_answer, same_answer, verifier)
from marco_jax.search.problems import gold_answer

MARCO = """<Thought>
Janet's ducks lay 16 eggs. She eats 3 and bakes with 4, so 16 - 3 - 4 = 9 are left.
At first I thought \\boxed{16}, but that counts the eaten ones.
9 eggs at $2 each make 9 * 2 = 18 dollars.
</Thought>
<Output>
Janet makes $18 every day at the farmers' market.
</Output>"""

PYTHON = """Let me compute it with Python.
```python
eggs = 16 - 3 - 4
print(eggs * 2)
```
```output
18
```"""

LOOP = ("She sells 9 eggs for $2 each.\n"
        + "So she makes 18 dollars every day.\n" * 5
        + "So she makes 1")


@pytest.mark.parametrize("text, expected", [
    # <Output> wins over a boxed answer inside the thought.
    (MARCO, "18"),
    ("<Thought>\\boxed{5}</Thought><Output>\nThe answer is \\boxed{7}.\n</Output>", "7"),
    ("<Thought>2 + 2 = 4</Thought>\n<Output>\nShe has 12 apples left.", "12"),  # cut off, no </Output>
    # The last \boxed.
    ("First \\boxed{3}, on reflection the total is \\boxed{18}. Check: 9 * 2 = 18, 3 + 4 = 7", "18"),
    ("The answer is \\boxed{\\$18}.", "18"),
    ("So \\boxed{18 \\text{ dollars}} per day.", "18"),
    ("\\boxed{\\text{Total} = {\\left(9 \\times 2\\right)} = 18} and 9 * 2", "18"),  # nested braces
    ("The fraction is \\boxed{\\frac{3}{4}}.", "0.75"),
    ("The fraction is \\boxed{\\dfrac{1}{3}}.", "0.3333333333"),
    ("\\boxed{3/4}", "0.75"),
    ("\\boxed{1{,}234}", "1234"),
    ("\\boxed{25\\%} of 80 students", "25"),
    ("\\boxed{-3}", "-3"),
    ("$$\\boxed{2.50}$$", "2.5"),
    ("\\boxed{18}\nPut the final answer in \\boxed{}.", "18"),  # an empty box is no answer
    # Answer markers.
    ("9 * 2 = 18\nAnswer: 18\n\nQuestion: Roger has 5 tennis balls. He buys 2 more.", "18"),
    ("We add 1,000 and 234.\nThe answer is 1,234.", "1234"),
    ("**Answer:** $18.00", "18"),
    ("The temperature drops 5 degrees from 2 degrees, so the answer is -3 degrees.", "-3"),
    ("The final answer is:\n\n18 dollars\n\nI hope this helps with 2 more questions.", "18"),
    ("珍妮每天剩下 16 - 3 - 4 = 9 个鸡蛋，每个 2 美元。答案是 18 美元。", "18"),
    ("每天赚 9 × 2 = 18 元。\n答案：18", "18"),
    ("温度下降后，答案是-3度。", "-3"),
    # An invented output block after Python code.
    (PYTHON, "18"),
    ("```python\nprint(16 - 3 - 4)\n```\n```output\n9\n```\nSo she has 9 eggs left, 2 fewer", "9"),
    # The last number anywhere.
    ("She sells 9 eggs at $2.50 each, earning $22.50.", "22.5"),
    ("In total 1,234 people came, 1, 2 or 3 at a time.", "3"),
    ("It costs 12.0", "12"),
    ("Half of 5 is 2.5, so 25% of 10 is 2.50", "2.5"),
    ("The year was 10-3 = 7 days ago.", "7"),
    # A loop cut off mid-number answers with the complete copies.
    (LOOP, "18"),
    ("The answer is 18.\nThe answer is 18.\nThe answer is 1", "18"),
    ("答案是 18 元。答案是 18 元。答案是 1", "18"),
    ("\\boxed{18}\n\\boxed{18}\n\\boxed{1", "18"),
    # ...but a number that merely ends the text is kept.
    ("Answer: 1000", "1000"),
    ("Answer: 1212", "1212"),
    # No number at all.
    ("I don't know how to solve this problem.", None),
    ("<Thought>3 + 4 = 7</Thought><Output>I cannot tell.</Output>", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("predicted, gold, expected", [
    ("1234", "1,234", True),
    ("1,234", "1234", True),
    ("18", "18", True),
    ("18", "18.0", True),
    ("2.5", "2.50", True),
    ("-3", "-3", True),
    ("0.3333333333", "1/3", True),
    ("17", "18", False),
    ("18.001", "18", False),
    ("123", "1,234", False),
    (None, "18", False),
    ("eighteen", "18", False),
])
def test_answers_match(predicted, gold, expected):
    assert answers_match(predicted, gold) is expected


def test_answers_match_end_to_end():
    assert answers_match(extract_answer("So the total is \\boxed{1,234}."), "1,234")
    assert not answers_match(extract_answer("no idea"), "1,234")


def test_bad_gold_is_an_error():
    with pytest.raises(MarcoError, match="'n/a'"):
        answers_match("18", "n/a")


@pytest.mark.parametrize("answers, expected", [
    (["18", "9", "18", None, "9"], "18"),
    (["9", "18", "18", "9"], "9"),  # tie: first seen wins
    (["18", "9", "9", "18"], "18"),
    ([None, "7", None, None], "7"),
    ([None, None], None),
    ([], None),
])
def test_majority_answer(answers, expected):
    assert majority_answer(answers) == expected


# --- verifiers ------------------------------------------------------------------------

@pytest.mark.parametrize("text, gold, ok", [
    ("So she sold 1234 clips.", "1,234", True),                       # GSM8K thousands gold
    ("<answer>The total is 1,234.</answer>", "1234", True),
    ("The temperature drops to -7 degrees.", "-7", True),
    ("The temperature drops 7 degrees.", "-7", False),
    ("Each costs \\boxed{2.50} dollars", "2.5", True),
    ("I think 12 at first. <answer>13</answer> then 12 again", "12", False),  # the tag decides
    ("<Thought>24 then 72</Thought><Output>72</Output>", "72", True),
    ("no number here", "5", False),
])
def test_numeric(text, gold, ok):
    assert verifier("numeric")(text, gold) is ok


def test_numeric_reads_gsm8k_gold_answers():
    gold, _ = gold_answer("She earns 12/60 = $<<12/60=0.2>>0.2 a minute.\n#### 10")
    assert verifier("numeric")("Total: $10.00", gold)
    assert not verifier("numeric")("Total: $0.2", gold)


def test_letter_count_reads_digits_and_words():
    check = verifier("letter_count")
    assert check("<answer>There are three r's in strawberry.</answer>", "3")
    assert check("<answer>3</answer>", "3")
    assert not check("<answer>There are two r's.</answer>", "3")
    assert not check("<answer>I count 2, not three.</answer>", "3")  # the digit is the answer


def test_exact_and_final_region():
    check = verifier("exact")
    assert check("<answer> Paris. </answer>", "paris")
    assert check("so \\boxed{Blue whale}", "blue  whale")
    assert not check("<answer>Paris is the capital</answer>", "Paris")
    assert final_region("a <answer>x</answer> b <answer>y") == "y"
    with pytest.raises(MarcoError, match="unknown verifier 'fuzzy'"):
        verifier("fuzzy")


# --- where the graders of old disagreed -------------------------------------------------

def test_a_record_states_the_answer_the_verifier_checks():
    """The record's chosen answer used to come from the whole text, the numeric
    verifier's from the final region: on a v2 answer followed by more prose, they
    named different numbers."""
    text = "<answer>3</answer> (double-checked: 2 + 1, not 5)"
    assert extract_answer(text) == "5"  # the whole text's last number
    assert final_answer(text) == "3"    # what a record now states
    assert verifier("numeric")(text, "3") and answers_match(final_answer(text), "3")


def test_the_page_compares_answers_as_the_records_do():
    """The tree page had its own rule (string or float equality): "1,234" and "1234"
    differed there, and a text gold answer raised nothing but never matched case."""
    assert same_answer("1234", "1,234") and same_answer("18", "18.0")
    assert same_answer("0.5", "1/2")
    assert same_answer("Paris", "paris.") and not same_answer("Paris", "Lyon")
    assert not same_answer("17", "18")
