"""Problem readers: GSM8K, MGSM, letter-counting JSON and generic JSONL."""

import json

import pytest

from marco_jax.errors import MarcoError
from marco_jax.search.problems import gold_answer, read_problems


def test_gsm8k_answers_are_cut_to_their_final_number(tmp_path):
    rows = [{"question": "Q one?", "answer": "48/2 = <<48/2=24>>24\n#### 1,234"},
            {"question": "Q two?", "answer": "It falls.\n#### -3.5"}]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = read_problems(path)
    assert [(p["id"], p["answer"]) for p in problems] == [("train-1", "1,234"),
                                                         ("train-2", "-3.5")]
    assert problems[0]["solution"] == "48/2 = <<48/2=24>>24"
    assert gold_answer("17") == ("17", None) and gold_answer(None) == (None, None)


def test_letter_count_json_and_generic_records(tmp_path):
    path = tmp_path / "letters.json"
    path.write_text(json.dumps([{"id": "real_0", "problem": "How many r in straw?", "solution": 1},
                                {"id": "real_1", "question": "Count e in bee.", "answer": "2"},
                                {"id": "real_2"}]))
    problems = read_problems(path)
    assert [(p["id"], p["question"], p["answer"]) for p in problems] == [
        ("real_0", "How many r in straw?", "1"), ("real_1", "Count e in bee.", "2")]
    with pytest.raises(MarcoError, match=r"letters.json\[2\]: expected a 'question'"):
        read_problems(path, on_bad_line="error")
    path.write_text('{"id": 1}')
    with pytest.raises(MarcoError, match="expected a list of problems"):
        read_problems(path)
