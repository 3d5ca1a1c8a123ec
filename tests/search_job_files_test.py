"""The search job end to end on the tiny model: resume after a kill, bad input lines,
configs, tree rendering and the MGSM evaluation summary; one job per output, a resume
under other settings refused, an input without problems refused."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from cli_test import ROOT, assert_one_line_error, run_script
from marco_jax import run_lock
from marco_jax.errors import MarcoError
from marco_jax.files import lines
from marco_jax.search import job_files, shares
from marco_jax.search import problems as problems_lib
from marco_jax.search.config import load_job_config
from marco_jax.search.job_files import summarize

FAST = ["--iterations", "2", "--slots", "4"]


def write_problems(path, n, bad_line=False):
    lines = [json.dumps({"id": f"p{i}", "question": f"What is {i}+1?", "answer": str(i + 1)})
             for i in range(n)]
    if bad_line:
        lines.insert(1, "{not json")
    path.write_text("\n".join(lines) + "\n")


V2_FAST = ["--set", "search.call_tokens=12", "--set", "search.max_tokens=400",
           "--max-model-len", "1024"]


@pytest.mark.parametrize("config, extra", [("mcts-mini32", []), ("v2-gsm8k", V2_FAST)])
def test_killed_job_restarts_and_writes_each_id_once(tmp_path, config, extra):
    write_problems(tmp_path / "in.jsonl", 4)
    out, trees = tmp_path / "out.jsonl", tmp_path / "trees.jsonl"
    # two trees at a time: the kill after the first line leaves problems to resume
    extra = [*extra, "--trees-in-flight", "2"]
    cmd = [sys.executable, str(ROOT / "scripts" / "search.py"), "--config", config,
           "--input", str(tmp_path / "in.jsonl"), "--output", str(out),
           "--trees", str(trees), *FAST, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (out.is_file() and out.read_text().count("\n") >= 1):
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    for torn in (out, trees):
        with open(torn, "a") as f:
            f.write('{"id": "p3", "trunc')  # a line torn by the kill
    done = run_script("search.py", "--config", config, "--input", str(tmp_path / "in.jsonl"),
                      "--output", str(out), "--trees", str(trees), *FAST, *extra)
    assert done.returncode == 0, done.stderr
    ids = [json.loads(line)["id"] for line in lines(out.read_text())]
    assert sorted(ids) == ["p0", "p1", "p2", "p3"]
    assert "already in" not in done.stdout  # the second run had problems left
    record = json.loads(lines(out.read_text())[0])
    if config == "mcts-mini32":
        assert record["tree"]["root_visits"] == 2 * 4 and record["n"] == 8
    else:
        assert record["rollouts"] == record["tree"]["root_visits"] == 2
    assert {"chosen_answer", "correct", "test_at_n", "reward", "text", "status",
            "correct_answers"} <= set(record)
    assert sorted(json.loads(line)["id"] for line in lines(trees.read_text())) == sorted(ids)
    html = run_script("show_tree.py", str(trees), "--id", "p3")
    assert html.returncode == 0, html.stderr
    assert (tmp_path / "p3.html").is_file()


def test_bad_lines_are_reported_with_their_number(tmp_path):
    write_problems(tmp_path / "in.jsonl", 2, bad_line=True)
    problems = problems_lib.read_problems(tmp_path / "in.jsonl")
    assert [p["id"] for p in problems] == ["p0", "p1"]
    with pytest.raises(MarcoError, match=r"in.jsonl:2: not JSON"):
        problems_lib.read_problems(tmp_path / "in.jsonl", on_bad_line="error")
    proc = run_script("search.py", "--config", "cot", "--input", str(tmp_path / "in.jsonl"),
                      "--output", str(tmp_path / "o.jsonl"), "--on-bad-line", "error")
    assert_one_line_error(proc, "in.jsonl:2")
    (tmp_path / "m.tsv").write_text("What is 2+2?\t4\nno tab here\n")
    assert [p["id"] for p in problems_lib.read_problems(tmp_path / "m.tsv")] == ["m-1"]


def test_a_checker_config_without_a_checker_model_is_refused_before_loading(tmp_path):
    config = json.loads((ROOT / "marco_jax/configs/search/v2-gsm8k.json").read_text())
    config["action_tree"]["types"]["double_check"]["model"] = "checker"
    (tmp_path / "checked.json").write_text(json.dumps(config))
    write_problems(tmp_path / "in.jsonl", 1)
    proc = run_script("search.py", "--config", str(tmp_path / "checked.json"), "--model",
                      str(tmp_path / "no-such-model"), "--input", str(tmp_path / "in.jsonl"),
                      "--output", str(tmp_path / "o.jsonl"))
    assert_one_line_error(proc, "pass --checker-model")


def test_configs_and_shards():
    for name in ("cot", "sc", "mcts-step", "mcts-mini64", "mcts-mini32", "translation",
                 "v2-gsm8k", "v2-letters"):
        job = load_job_config(name)
        assert job.name == name
    assert load_job_config("mcts-mini32").search.mini_step_tokens == 32
    with pytest.raises(MarcoError, match="no search config 'nope'"):
        load_job_config("nope")
    assert shares.shard(list(range(7)), 1, 3) == [1, 4]
    with pytest.raises(MarcoError, match="process index 3"):
        shares.shard([1], 3, 3)


def test_eval_mgsm_summary(tmp_path):
    (tmp_path / "mgsm.tsv").write_text("What is 2+2?\t4\nWhat is 3+3?\t6\n")
    proc = run_script("eval_mgsm.py", "--data", str(tmp_path / "mgsm.tsv"), "--method", "sc",
                      "--out-dir", str(tmp_path), "--iterations", "1", "--max-tokens", "24",
                      "--template", "chat", "--tag", "chat")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["problems"] == 2 and "test@8" in summary and 0 <= summary["pass@1"] <= 1
    assert {"test@1", "test@8"} <= set(summary) and "test@32" not in summary
    records = [json.loads(l) for l in lines((tmp_path / "mgsm-sc-chat.jsonl").read_text())]
    assert len(records) == 2 and all(r["generated_tokens"] <= 8 * 24 for r in records)


def test_summary_counts_test_at_k_over_the_first_k_rollouts(tmp_path):
    def line(i, answers, correct):
        return json.dumps({"id": f"p{i}", "answer": "7", "correct": correct, "n": len(answers),
                           "test_at_n": "7" in answers, "candidate_answers": answers,
                           "generated_tokens": 10})
    out = tmp_path / "out.jsonl"
    out.write_text("\n".join([line(0, ["7", "1", "2", "3"], True),
                              line(1, ["1", "7", "2", "3"], False),
                              line(2, ["1", "2", "3", None], False),
                              line(3, ["7", "7", "7", "7"], True)]) + "\n")
    summary = summarize(out, test_at=(1, 2))
    assert summary == {"problems": 4, "pass@1": 0.5, "test@4": 0.75, "vote@4": 0.5,
                       "test@1": 0.5, "test@2": 0.75, "generated_tokens": 40}
    assert summarize(out, {"p2", "p3"})["problems"] == 2


def test_a_second_job_on_one_output_stops_naming_the_holder(tmp_path):
    write_problems(tmp_path / "in.jsonl", 2)
    out = tmp_path / "o.jsonl"
    with run_lock.held(run_lock.lock_path(out), "another job"):
        proc = run_script("search.py", "--config", "cot", "--input", str(tmp_path / "in.jsonl"),
                          "--output", str(out))
        assert proc.returncode == 2
        assert_one_line_error(proc, f"o.jsonl is in use by another job: pid {os.getpid()} ")
        # spread over hosts: process 0 locks the output, each process its part
        with pytest.raises(MarcoError, match=f"pid {os.getpid()} "):
            with shares.spread([{"id": "p0"}], out, None):
                pass
    with run_lock.held(run_lock.lock_path(shares.part_path(out, 0, 1)), "another job"):
        with pytest.raises(MarcoError, match=r"o.jsonl.part-0-of-1 is in use"):
            with shares.spread([{"id": "p0"}], out, None):
                pass
    assert not out.exists()


def test_resuming_under_other_settings_is_refused_and_force_new_starts_over(tmp_path):
    write_problems(tmp_path / "in.jsonl", 1)
    out = tmp_path / "o.jsonl"
    out.write_text(json.dumps({"id": "p0", "config": "mcts-step"}) + "\n")
    job_files.check_stamp(out, job_files.stamp(load_job_config("mcts-step"), "builtin:tiny"),
                          has_results=False)
    fast = ["--input", str(tmp_path / "in.jsonl"), "--output", str(out), "--slots", "8",
            "--set", "search.max_tokens=8", "--set", "search.call_tokens=8"]
    proc = run_script("search.py", "--config", "sc", *fast)
    assert proc.returncode == 2
    assert_one_line_error(proc, "o.jsonl holds results of config mcts-step (")
    assert "not of config sc (" in proc.stderr and "--force-new" in proc.stderr
    proc = run_script("search.py", "--config", "sc", "--force-new", *fast)
    assert proc.returncode == 0, proc.stderr
    assert lines((tmp_path / "o.jsonl.bak-1").read_text()) == [
        json.dumps({"id": "p0", "config": "mcts-step"})]
    assert json.loads((tmp_path / "o.jsonl.config.json.bak-1").read_text())["config"] == \
        "mcts-step"
    assert [json.loads(line)["config"] for line in lines(out.read_text())] == ["sc"]
    assert json.loads((tmp_path / "o.jsonl.config.json").read_text())["config"] == "sc"
    again = run_script("search.py", "--config", "sc", *fast)  # the same settings resume
    assert again.returncode == 0 and "already in" in again.stdout, again.stderr
    changed = run_script("search.py", "--config", "sc", "--seed", "7", *fast)
    assert_one_line_error(changed, "differs in search.seed")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "in.jsonl", "o.jsonl", "o.jsonl.bak-1", "o.jsonl.config.json",
        "o.jsonl.config.json.bak-1"]


def test_an_output_without_results_takes_the_new_settings(tmp_path):
    out = tmp_path / "o.jsonl"
    cot, sc = (job_files.stamp(load_job_config(name), "builtin:tiny") for name in ("cot", "sc"))
    job_files.check_stamp(out, cot, has_results=False)
    job_files.check_stamp(out, sc, has_results=False)  # nothing was written under cot
    with pytest.raises(MarcoError, match=r"differs in final, search.children"):
        job_files.check_stamp(out, cot, has_results=True)
    assert cot["fingerprint"] == job_files.stamp(load_job_config("cot"), "builtin:tiny")[
        "fingerprint"] != job_files.stamp(load_job_config("cot", seed=1), "builtin:tiny")[
        "fingerprint"]


@pytest.mark.parametrize("text", ["", "{not json\n\n"])
def test_empty_or_all_bad_input_is_an_error(tmp_path, text):
    (tmp_path / "in.jsonl").write_text(text)
    proc = run_script("search.py", "--config", "cot", "--input", str(tmp_path / "in.jsonl"),
                      "--output", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2
    assert_one_line_error(proc, f"no problems in {tmp_path / 'in.jsonl'}")
    assert not (tmp_path / "o.jsonl").exists()


def test_an_output_from_before_the_sidecar_is_adopted_only_by_its_config(tmp_path):
    """Without OUTPUT.config.json the lines' config names say who wrote them."""
    out = tmp_path / "o.jsonl"
    out.write_text(json.dumps({"id": "p0", "config": "mcts-step"}) + "\n")
    cot, mcts = (job_files.stamp(load_job_config(name), "builtin:tiny")
                 for name in ("cot", "mcts-step"))
    with pytest.raises(MarcoError, match=r"o.jsonl holds results of config mcts-step \(written "
                                         r"before .*not of config cot: pass --force-new"):
        job_files.check_stamp(out, cot, has_results=True)
    assert not job_files.config_path(out).exists()
    parted = tmp_path / "q.jsonl"  # a multi-host job's parts count too
    (tmp_path / "q.jsonl.part-1-of-2").write_text(json.dumps({"id": "p1", "config": "sc"}) + "\n")
    with pytest.raises(MarcoError, match="q.jsonl holds results of config sc "):
        job_files.check_stamp(parted, cot, has_results=True)
    job_files.check_stamp(out, mcts, has_results=True)  # its own config: adopted, recorded
    assert json.loads(job_files.config_path(out).read_text())["config"] == "mcts-step"
    write_problems(tmp_path / "in.jsonl", 1)
    (tmp_path / "o.jsonl.config.json").unlink()
    proc = run_script("search.py", "--config", "sc", "--input", str(tmp_path / "in.jsonl"),
                      "--output", str(out))
    assert proc.returncode == 2
    assert_one_line_error(proc, "o.jsonl holds results of config mcts-step (written before")
    assert "--force-new" in proc.stderr and not job_files.config_path(out).exists()


def test_tree_tokens_keep_each_action_nodes_token_scores(tmp_path):
    write_problems(tmp_path / "in.jsonl", 1)
    out, trees = tmp_path / "out.jsonl", tmp_path / "trees.jsonl"
    args = ["--config", "mcts-mini32", "--input", str(tmp_path / "in.jsonl"),
            "--output", str(out), *FAST]
    assert_one_line_error(run_script("search.py", *args, "--tree-tokens"), "give --trees")
    done = run_script("search.py", *args, "--trees", str(trees), "--tree-tokens")
    assert done.returncode == 0, done.stderr
    [tree] = [json.loads(line) for line in lines(trees.read_text())]
    actions = [n for n in tree["nodes"] if n["kind"] == "action"]
    assert actions and all(len(n["tokens"]) >= 1 and len(n["tokens"][0]["top"]) == 5
                           for n in actions)
    assert all("tokens" not in n for n in tree["nodes"] if n["kind"] != "action")


def test_one_question_prints_its_answer_candidates_and_tree_page(tmp_path):
    page = tmp_path / "tree.html"
    done = run_script("search.py", "--config", "mcts-step", "--iterations", "2", "--set",
                      "search.max_tokens=24", "--question", "What is 2+3?", "--answer", "5",
                      "--tree-html", str(page))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "\nanswer: " in out and "the answer is 5)" in out  # graded against --answer
    rows = out.split("candidates (confidence: the rollout's mean token confidence):\n")[1]
    values = [float(row.split()[0]) for row in rows.splitlines() if row.startswith("  0.")]
    assert values == sorted(values, reverse=True) and out.count("<- chosen") >= 1
    assert f"tree page: {page.resolve()}" in out
    assert "searching: " in done.stderr and " expansions" in done.stderr  # its progress bar
    data = json.loads(re.search(r'class="tree-data">(.*?)</script>', page.read_text()).group(1))
    valued = [n for n in data["nodes"] if n["kind"] == "action" and n["rollout_value"] is not None]
    assert len(values) == len(valued) >= 4  # every candidate shown, best first
    assert all("tokens" in n for n in data["nodes"] if n["kind"] == "action")
    assert not list(tmp_path.glob("*.jsonl"))  # no job files


@pytest.mark.parametrize("extra, fragment", [
    (["--question", "q", "--output", "o.jsonl"], "drop --output"),
    (["--input", "in.jsonl", "--tree-html", "t.html"], "go with --question"),
    (["--input", "in.jsonl"], "--input needs --output"),
])
def test_question_and_job_options_do_not_mix(tmp_path, extra, fragment):
    write_problems(tmp_path / "in.jsonl", 1)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "search.py"), "--config", "cot",
                           *extra], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert_one_line_error(proc, fragment)
