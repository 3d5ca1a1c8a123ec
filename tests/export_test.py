"""Exporting trees as SFT chains and DPO pairs: verified, deduplicated, never MGSM."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest

from marco_jax.errors import MarcoError
from marco_jax.grading import verifier
from marco_jax.loading import load
from marco_jax.search import export
from marco_jax.search.config import load_job_config
from marco_jax.search.record import TreeRecord
from marco_jax.search.results import Problem
from marco_jax.train.data import read_records, tokenize_record
from cli_test import assert_one_line_error, run_script
from tagged_test import TextEngine, tagged, writer

MGSM_EN_1 = ("Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and "
             "bakes muffins for her friends every day with four. She sells the remainder at the "
             "farmers' market daily for $2 per fresh duck egg. How much in dollars does she make "
             "every day at the farmers' market?")


@pytest.fixture(scope="module")
def tok():
    return load("builtin:tiny").tokenizer


def node(i, parent, text, kind="thinking", finish="open", correct=None):
    return {"id": i, "parent": parent, "text": text, "kind": kind, "finish": finish,
            "rollout_text": "", "rollout_finished": False, "correct": correct}


def tree(question="What is 2+2?", answer="4"):
    """root -> sub -> {t1 -> a(4) right, t2 -> a(5) wrong, t2 -> a(4) right, longer}"""
    nodes = [node(0, -1, "Q", "root"),
             node(1, 0, "<sub-task>split</sub-task>\n", "sub_task"),
             node(2, 1, "<thinking>2+2=4</thinking>\n"),
             node(3, 2, "<answer>The answer is: \\boxed{4}</answer>\n", "answer", "answer"),
             node(4, 1, "<thinking>2+2 is five, or rather</thinking>\n"),
             node(5, 4, "<answer>The answer is: \\boxed{5}</answer>\n", "answer", "answer"),
             node(6, 4, "<reflection>Wait! wrong.\n</reflection>\n", "reflection"),
             node(7, 6, "<answer>The answer is: \\boxed{4}</answer>\n", "answer", "answer")]
    return TreeRecord.from_json({"id": "p1", "question": question, "answer": answer,
                                 "nodes": nodes}, "tree")


def test_chains_are_reverified_and_selected_by_length():
    found = export.chains(tree(), verifier("numeric"))
    assert [(c.node, c.correct) for c in found] == [(3, True), (5, False), (7, True)]
    right = [c for c in found if c.correct]
    assert [c.node for c in export.select(right, "shortest")] == [3]
    assert [c.node for c in export.select(right, "longest")] == [7]
    assert [c.node for c in export.select(right, "median")] == [3]
    assert [c.node for c in export.select(right, "all")] == [3, 7]
    wrong_gold = export.chains(tree(answer="5"), verifier("numeric"))
    assert [c.correct for c in wrong_gold] == [False, True, False]  # the tree's flags are ignored


def test_marco_rendering():
    text = export.chains(tree(), verifier("numeric"))[0].text
    assert export.render(text, "tags") == text
    assert export.render(text, "marco") == (
        "<Thought>\nsplit\n\n2+2=4\n</Thought>\n<Output>\nThe answer is: \\boxed{4}\n</Output>")
    assert export.render("2 + 2 is 4.\n", "marco") == (
        "<Thought>\n2 + 2 is 4.\n</Thought>\n<Output>\nThe answer is: \\boxed{4}\n</Output>")
    assert export.render("no number here", "marco") == "no number here"
    marco = "<Thought>\n4\n</Thought>\n<Output>\n4\n</Output>"
    assert export.render(marco, "marco") == marco
    # cut off by the budget: the thought so far, never closed, no output invented
    assert export.render("2 + 2 is 4, so 4 + 4", "marco", finished=False) == (
        "<Thought>\n2 + 2 is 4, so 4 + 4")
    assert export.render("<sub-task>split</sub-task>\n<thinking>2+2 is", "marco",
                         finished=False) == "<Thought>\nsplit\n\n2+2 is"


def test_sft_records_load_through_the_sft_pipeline_and_mask_the_prompt(tok, tmp_path):
    sft, prefs, counts = export.export([tree(), tree()], verifier("numeric"), tok.encode,
                                       how="all")
    assert counts == {"trees": 2, "solved": 2, "chains": 6, "correct": 4, "unfinished": 0}
    assert len(sft) == 2  # the second tree repeats the first: written once
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sft))
    records, skipped = read_records(path)
    assert len(records) == 2 and not skipped
    ids, learned = tokenize_record(records[0], tok, None)
    text = tok.decode(ids)
    first = int(np.argmax(learned))
    assert "What is 2+2?" in tok.decode(ids[:first]) and not learned[:first].any()
    assert tok.decode(ids[learned]).startswith("<Thought>") and "<Output>" in text


def test_pairs_share_a_real_prefix_and_are_capped(tok):
    _, prefs, _ = export.export([tree()], verifier("numeric"), tok.encode, form="tags", cap=4)
    assert len(prefs) == 2  # two correct chains, one wrong one: two distinct pairs
    for pair in prefs:
        chosen, rejected = tok.encode(pair["chosen"]), tok.encode(pair["rejected"])
        n = pair["shared_prefix_tokens"]
        assert chosen[:n] == rejected[:n] and chosen[n] != rejected[n]
        assert verifier("numeric")(pair["chosen"], "4")
        assert not verifier("numeric")(pair["rejected"], "4")
        assert pair["prompt"] == [{"role": "user", "content": "What is 2+2?"}]
    # node 7 shares the wrong chain's thinking: the longer common prefix
    assert prefs[1]["shared_prefix_tokens"] > prefs[0]["shared_prefix_tokens"]
    _, capped, _ = export.export([tree()], verifier("numeric"), tok.encode, cap=1)
    assert len(capped) == 1


def cut_tree(text="<Thought>\n2+2=4, 2+2=4, 2+2=4, 2+2"):
    """A later model's greedy chain on the same problem, cut off by the token budget
    (a number that matches the gold answer must not make it correct)."""
    return TreeRecord.from_json({"id": "p1", "question": "What is 2+2?", "answer": "4",
                                 "nodes": [node(0, -1, "Q", "root"),
                                           node(1, 0, text, "action", "cut")]}, "tree")


def test_unfinished_chains_are_the_rejected_side_on_request(tok):
    merged = [tree(), cut_tree()]
    found = export.chains(cut_tree(), verifier("numeric"), search=1)
    assert [(c.label, c.correct, c.finished) for c in found] == [("1.1", False, False)]
    _, wrong, counts = export.export(merged, verifier("numeric"), tok.encode, cap=4)
    assert counts["unfinished"] == 1 and counts["chains"] == 3
    assert {p["rejected_node"] for p in wrong} == {5} and len(wrong) == 2
    _, cut, _ = export.export(merged, verifier("numeric"), tok.encode, cap=4,
                              rejected="unfinished")
    # both correct chains of the first search against the second search's cut chain
    assert [p["id"] for p in cut] == ["p1:3-1.1", "p1:7-1.1"]
    assert all(p["rejected"] == "<Thought>\n2+2=4, 2+2=4, 2+2=4, 2+2" and
               p["rejected_search"] == 1 and not p["rejected_finished"] for p in cut)
    _, both, _ = export.export(merged, verifier("numeric"), tok.encode, cap=2, rejected="both")
    assert [p["rejected_node"] for p in both] == [1, 5]  # unfinished first, then used evenly
    _, alone, _ = export.export([cut_tree()], verifier("numeric"), tok.encode, rejected="both")
    assert alone == []  # nothing correct to prefer over it
    with pytest.raises(MarcoError, match="different gold answers"):
        export.export([tree(), dataclasses.replace(cut_tree(), answer="5")], verifier("numeric"),
                      tok.encode)
    with pytest.raises(MarcoError, match="rejected must be one of"):
        export.export(merged, verifier("numeric"), tok.encode, rejected="looping")


def test_mgsm_questions_are_refused(tok, tmp_path):
    with pytest.raises(MarcoError, match="evaluation \\(MGSM\\) question"):
        export.export([tree(question=MGSM_EN_1.upper())], verifier("numeric"), tok.encode,
                      refused=export.eval_question_keys())
    extra = tmp_path / "held_out.jsonl"
    extra.write_text(json.dumps({"id": "h", "question": "What is 2+2?", "answer": "4"}) + "\n")
    with pytest.raises(MarcoError, match="evaluation"):
        export.export([tree()], verifier("numeric"), tok.encode,
                      refused=export.eval_question_keys([extra]))


def test_trees_from_the_tagged_search_export(tok, tmp_path):
    count = [0]

    def answer(context):
        count[0] += 1
        return 3 if count[0] % 2 == 0 else 4
    job = load_job_config("v2-letters", iterations=6, max_tokens=100_000)
    search = tagged({"policy": TextEngine(tok, writer(answer))}, tok, job.search,
                    job.action_tree)
    prompt = tok.encode("Q: how many r in strawberry?", add_special_tokens=False)
    [(key, result)] = list(search.stream([Problem("p", prompt, 0, "3")]))
    problem = {"id": "p", "question": "how many r in strawberry?", "answer": "3"}
    written = TreeRecord.of(result.tree, tok.decode, problem["id"], problem["question"],
                            problem["answer"], None, result.best_path)
    trees = [TreeRecord.from_json(json.loads(json.dumps(written.to_json())), "tree")]
    sft, prefs, counts = export.export(trees, verifier("letter_count"), tok.encode, how="all")
    assert counts["correct"] == result.correct >= 2
    texts = [r["messages"][1]["content"] for r in sft]
    assert 1 <= len(texts) == len(set(texts)) <= result.correct  # identical chains once
    assert prefs and all(p["chosen_node"] != p["rejected_node"] for p in prefs)
    assert sft[0]["messages"][1]["content"].endswith("\\boxed{3}\n</Output>")


def write_trees(path: pathlib.Path, *trees: TreeRecord) -> pathlib.Path:
    path.write_text("".join(json.dumps(t.to_json()) + "\n" for t in trees), encoding="utf-8")
    return path


def test_export_cli(tmp_path):
    trees = write_trees(tmp_path / "trees.jsonl", tree())
    proc = run_script("export_data.py", "--trees", str(trees), "--sft", str(tmp_path / "s.jsonl"),
                      "--pairs", str(tmp_path / "p.jsonl"), "--select", "all")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"trees": 1, "solved": 1, "chains": 3, "correct": 2,
                                       "unfinished": 0, "sft_records": 2, "pairs": 2}
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 2
    eval_trees = write_trees(tmp_path / "eval.jsonl", tree(),
                             dataclasses.replace(tree(question=MGSM_EN_1), id="p2"))
    proc = run_script("export_data.py", "--trees", str(eval_trees), "--sft", "x")
    assert_one_line_error(proc, "evaluation (MGSM) question")
    assert_one_line_error(run_script("export_data.py", "--trees", str(tmp_path), "--sft", "x"),
                          "no tree files")
    later = write_trees(tmp_path / "later.jsonl", cut_tree())
    proc = run_script("export_data.py", "--trees", str(trees), "--trees", str(later),
                      "--pairs", str(tmp_path / "cut.jsonl"), "--rejected", "unfinished")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["pairs"] == 2
    assert [json.loads(line)["id"] for line in open(tmp_path / "cut.jsonl")] == [
        "p1:3-1.1", "p1:7-1.1"]
