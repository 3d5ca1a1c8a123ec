"""The report tool of the benchmarks (benchmarks/mgsm_tables.py: the MGSM method
table and the self-improvement table) and the shared JSON output (report.py),
on small files and on the committed results under benchmarks/results/."""

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import mgsm_tables  # noqa: E402
import report  # noqa: E402

MARCO = "<Thought>3 + 4 = 7</Thought>\n<Output>7</Output>"


def write_mgsm(path: pathlib.Path, correct: list[bool], n: int) -> None:
    rows = [{"id": f"p{i}", "answer": "1", "correct": c, "test_at_n": c, "n": n,
             "candidate_answers": ["1" if c else "2"] * n, "generated_tokens": 10}
            for i, c in enumerate(correct)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_loop(path: pathlib.Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps({"answer": "7", "n": 1, **r}) + "\n" for r in rows))


def test_mgsm_table_counts_problems_solved_only_by_one_side(tmp_path):
    write_mgsm(tmp_path / "mgsm_en-cot-x.jsonl", [True, True, False, False], n=1)
    write_mgsm(tmp_path / "mgsm_en-mcts-step-x.jsonl", [True, False, True, True], n=8)
    write_mgsm(tmp_path / "mgsm_en-sc-x.jsonl", [True], n=8)
    rows = {r["method"]: r for r in mgsm_tables.mgsm_table(tmp_path)}
    assert rows["mcts-step"]["pass@1"] == 0.75 and rows["cot"]["pass@1"] == 0.5
    assert (rows["mcts-step"]["only_this"], rows["mcts-step"]["only_cot"]) == (2, 1)
    assert rows["sc"]["partial"] and not rows["mcts-step"]["partial"]
    text = mgsm_tables.mgsm_markdown(list(rows.values()))
    assert "| mcts-step | en | 4 | 75.0% (3/4) |" in text and "sc (partial)" in text


def test_loop_cot_rows_count_format_and_cut_off_outputs(tmp_path):
    write_loop(tmp_path / "mgsm_en-cot-sft-marco384.jsonl", [
        {"id": "a", "correct": True, "text": MARCO, "generated_tokens": 20},
        {"id": "b", "correct": False, "text": "<Thought>3 + 4 = 7</Thought> 7",
         "generated_tokens": 20},
        {"id": "c", "correct": False, "text": "<Thought>3 + 4 = 3 + 4 = ",
         "generated_tokens": 384},
        {"id": "d", "correct": True, "text": MARCO, "generated_tokens": 30}])
    (sft,) = mgsm_tables.loop_table(tmp_path, limit=4)
    assert (sft["model"], sft["method"], sft["partial"]) == ("sft", "cot-marco", False)
    assert (sft["pass@1"], sft["marco_format"], sft["unfinished"]) == (0.5, 0.5, 0.25)
    assert "test@8" not in sft and sft["generated_tokens"] == 454


def test_loop_search_rows_add_test_and_vote_over_rollouts(tmp_path):
    def record(i, correct, answers):
        return {"id": f"p{i}", "correct": correct, "test_at_n": "7" in answers, "n": 8,
                "candidate_answers": answers, "text": "", "generated_tokens": 100}
    write_loop(tmp_path / "mgsm_zh-mcts-step-dpo-chat384.jsonl", [
        record(0, False, ["7"] * 3 + ["2"] * 5), record(1, True, ["7"] * 5 + ["2"] * 3)])
    (dpo,) = mgsm_tables.loop_table(tmp_path, limit=40)
    assert (dpo["language"], dpo["method"], dpo["partial"]) == ("zh", "mcts-step", True)
    assert (dpo["pass@1"], dpo["test@8"], dpo["vote@8"], dpo["unfinished"]) == (0.5, 1.0, 0.5, None)
    line = "| dpo | zh | mcts-step (partial: 2) | 50.0% (1/2) | 0.0% | – | 100.0% | 50.0% | 200 |"
    assert line in mgsm_tables.loop_markdown([dpo])


def test_the_committed_results_give_the_tables_of_benchmarks_md():
    benchmarks_md = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    rows = mgsm_tables.mgsm_table(ROOT / "benchmarks/results/mgsm")
    assert len(rows) == 10 and not any(r["partial"] for r in rows)
    for line in mgsm_tables.mgsm_markdown(rows).splitlines():
        assert line in benchmarks_md
    rows = mgsm_tables.loop_table(ROOT / "benchmarks/results/loop/eval", limit=40)
    assert len(rows) == 20 and not any(r["partial"] for r in rows)
    sft_en = next(r for r in rows if (r["model"], r["language"], r["method"])
                  == ("sft", "en", "cot-marco"))
    assert (sft_en["pass@1"], sft_en["marco_format"], sft_en["generated_tokens"]) == \
        (0.125, 0.9, 10953)


def test_report_prints_and_writes_the_json(tmp_path, capsys):
    out = tmp_path / "deeper" / "r.json"
    report.report({"rows": [1, 2]}, out)
    assert json.loads(out.read_text()) == {"rows": [1, 2]}
    assert json.loads(capsys.readouterr().out) == {"rows": [1, 2]}
