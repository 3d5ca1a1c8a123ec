"""Ground-truth verifiers on the answer spellings GSM8K, v2's tags and small models produce."""

import pytest

from marco_jax.errors import MarcoError
from marco_jax.search.problems import gold_answer
from marco_jax.search.verifiers import final_region, verifier


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
