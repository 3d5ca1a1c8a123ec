"""The MGSM table script: summaries per file and problem-by-problem counts against CoT."""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import mgsm_report  # noqa: E402


def write(path: pathlib.Path, correct: list[bool], n: int) -> None:
    rows = [{"id": f"p{i}", "answer": "1", "correct": c, "test_at_n": c, "n": n,
             "candidate_answers": ["1" if c else "2"] * n, "generated_tokens": 10}
            for i, c in enumerate(correct)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_table_counts_problems_solved_only_by_one_side(tmp_path):
    write(tmp_path / "mgsm_en-cot-x.jsonl", [True, True, False, False], n=1)
    write(tmp_path / "mgsm_en-mcts-step-x.jsonl", [True, False, True, True], n=8)
    write(tmp_path / "mgsm_en-sc-x.jsonl", [True], n=8)
    rows = {r["method"]: r for r in mgsm_report.table(tmp_path)}
    assert rows["mcts-step"]["pass@1"] == 0.75 and rows["cot"]["pass@1"] == 0.5
    assert (rows["mcts-step"]["only_this"], rows["mcts-step"]["only_cot"]) == (2, 1)
    assert rows["sc"]["partial"] and not rows["mcts-step"]["partial"]
    text = mgsm_report.markdown(list(rows.values()))
    assert "| mcts-step | en | 4 | 75.0% (3/4) |" in text and "sc (partial)" in text
