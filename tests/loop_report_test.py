"""The self-improvement table script: format and unfinished shares, search rows' Test@8."""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import loop_report  # noqa: E402

MARCO = "<Thought>3 + 4 = 7</Thought>\n<Output>7</Output>"


def write(path: pathlib.Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps({"answer": "7", "n": 1, **r}) + "\n" for r in rows))


def test_cot_rows_count_format_and_cut_off_outputs(tmp_path):
    write(tmp_path / "mgsm_en-cot-sft-marco384.jsonl", [
        {"id": "a", "correct": True, "text": MARCO, "generated_tokens": 20},
        {"id": "b", "correct": False, "text": "<Thought>3 + 4 = 7</Thought> 7",
         "generated_tokens": 20},
        {"id": "c", "correct": False, "text": "<Thought>3 + 4 = 3 + 4 = ",
         "generated_tokens": 384},
        {"id": "d", "correct": True, "text": MARCO, "generated_tokens": 30}])
    (sft,) = loop_report.table(tmp_path, limit=4)
    assert (sft["model"], sft["method"], sft["partial"]) == ("sft", "cot-marco", False)
    assert (sft["pass@1"], sft["marco_format"], sft["unfinished"]) == (0.5, 0.5, 0.25)
    assert "test@8" not in sft and sft["generated_tokens"] == 454


def test_search_rows_add_test_and_vote_over_rollouts(tmp_path):
    def record(i, correct, answers):
        return {"id": f"p{i}", "correct": correct, "test_at_n": "7" in answers, "n": 8,
                "candidate_answers": answers, "text": "", "generated_tokens": 100}
    write(tmp_path / "mgsm_zh-mcts-step-dpo-chat384.jsonl", [
        record(0, False, ["7"] * 3 + ["2"] * 5), record(1, True, ["7"] * 5 + ["2"] * 3)])
    (dpo,) = loop_report.table(tmp_path, limit=40)
    assert (dpo["language"], dpo["method"], dpo["partial"]) == ("zh", "mcts-step", True)
    assert (dpo["pass@1"], dpo["test@8"], dpo["vote@8"], dpo["unfinished"]) == (0.5, 1.0, 0.5, None)
    line = "| dpo | zh | mcts-step (partial: 2) | 50.0% (1/2) | 0.0% | – | 100.0% | 50.0% | 200 |"
    assert line in loop_report.markdown([dpo])
