"""A search job spread over hosts: two processes on localhost (``--distributed``, gloo)
write their parts, are killed, resume and end with one output and one trees file equal,
record for record, to a one-process run's; the merge of parts, alone and on resume; a
failing process stops its peer; flags that contradict each other are refused."""

import json
import signal
import subprocess
import sys
import time

import pytest

from cli_test import ROOT, assert_one_line_error, run_script
from marco_jax.errors import MarcoError
from marco_jax.files import lines
from marco_jax.search import job_files, shares
from multihost_test import env, free_port

PROBLEMS = 6
FAST = ["--config", "mcts-mini32", "--iterations", "2", "--slots", "4", "--trees-in-flight",
        "1", "--set", "template=none", "--set", "search.max_tokens=64", "--set",
        "search.call_tokens=64", "--max-model-len", "128"]  # the pool sized from free memory


def write_problems(path, n=PROBLEMS):
    path.write_text("".join(json.dumps({"id": f"p{i}", "question": f"What is {i}+1?",
                                        "answer": str(i + 1)}) + "\n" for i in range(n)))


def line(i, tag=""):
    return json.dumps({"id": f"p{i}", "tag": tag})


def search_command(tmp_path, out: str, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "search.py"), *FAST,
            "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / f"{out}.jsonl"),
            "--trees", str(tmp_path / f"{out}-trees.jsonl"), *extra]


def launch_pair(tmp_path, out: str, *extra: str) -> list[subprocess.Popen]:
    port = free_port()
    return [subprocess.Popen(
        search_command(tmp_path, out, *extra, "--distributed", "--coordinator",
                       f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)),
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{out}-{i}.log", "ab"), env=env(1))
        for i in range(2)]


def logs(tmp_path, out: str) -> str:
    return "\n".join((tmp_path / f"{out}-{i}.log").read_text()[-1500:] for i in range(2))


def records(path) -> dict[str, dict]:
    """Each id's record without timing fields; every id once."""
    rows = [json.loads(text) for text in lines(path.read_text())]
    assert len({r["id"] for r in rows}) == len(rows)
    return {r["id"]: {k: v for k, v in r.items() if "second" not in k and "time" not in k}
            for r in rows}


def test_merged_lines_keep_the_file_then_each_new_id_once_in_input_order():
    merged = [line(1, "merged")]
    parts = [[line(3, "a"), line(1, "a"), "not json"], [line(9), line(0, "b"), line(3, "b")]]
    assert shares.merged_lines(merged, parts, ["p0", "p1", "p2", "p3"]) == \
        [line(1, "merged"), line(0, "b"), line(3, "a"), line(9)]


def test_parts_merge_into_the_file_and_a_rerun_of_the_merge_changes_nothing(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(line(2, "merged") + "\n")
    shares.part_path(out, 0, 2).write_text(line(0) + "\n" + line(2) + "\n")
    torn = shares.part_path(out, 1, 2)
    torn.write_text(line(1) + "\n" + '{"id": "p3", "tr')  # killed mid-write
    stale = shares.part_path(out, 0, 3)  # an earlier run on three hosts
    stale.write_text(line(3) + "\n")
    assert shares.part_paths(out)[-1] == stale
    assert shares.spread_finished_ids(out) == {"p0", "p1", "p2", "p3"}
    assert torn.read_text().endswith("tr")  # read only: its process may still be writing
    shares.merge_parts(out, ["p0", "p1", "p2", "p3"])
    expected = [line(2, "merged"), line(0), line(1), line(3)]
    assert lines(out.read_text()) == expected
    assert shares.part_paths(out) == []
    shares.merge_parts(out, ["p0", "p1", "p2", "p3"])
    assert lines(out.read_text()) == expected
    shares.part_path(out, 0, 2).touch()  # process 1 writes to a disk process 0 cannot see
    with pytest.raises(MarcoError, match=r"out.jsonl.part-1-of-2 \(process 1's part\) is not "
                                         "visible to process 0"):
        shares._check_shared(0, 2, out)


def test_one_process_spread_resumes_from_its_part_and_merges(tmp_path):
    problems = [{"id": f"p{i}"} for i in range(4)]
    out, trees = tmp_path / "out.jsonl", tmp_path / "trees.jsonl"
    shares.part_path(out, 0, 1).write_text(line(0) + "\n" + '{"id": "p1"')
    shares.part_path(trees, 0, 1).write_text(line(0) + "\n" + line(1) + "\n")
    with shares.spread(problems, out, trees) as share:
        assert [p["id"] for p in share.todo] == ["p1", "p2", "p3"]
        assert lines(share.trees.read_text()) == [line(0)]  # p1's tree had no output line
        for p in share.todo:
            job_files.append_line(share.trees, {"id": p["id"]})
            job_files.append_line(share.output, {"id": p["id"]})
    assert [json.loads(text)["id"] for text in lines(out.read_text())] == ["p0", "p1", "p2",
                                                                           "p3"]
    assert len(lines(trees.read_text())) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "trees.jsonl"]


def test_distributed_with_a_process_index_is_refused(tmp_path):
    proc = run_script("search.py", "--config", "cot", "--input", str(tmp_path / "in.jsonl"),
                      "--output", str(tmp_path / "o.jsonl"), "--distributed",
                      "--process-index", "0")
    assert_one_line_error(proc, "drop --process-index")


def test_a_failing_process_stops_its_peer_with_its_message(tmp_path):
    write_problems(tmp_path / "in.jsonl")
    port = free_port()
    pair = [subprocess.Popen(
        search_command(tmp_path, "bad", "--distributed", "--coordinator", f"127.0.0.1:{port}",
                       "--num-processes", "2", "--process-id", str(i),
                       *(["--set", "nope=1"] if i else [])),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(1))
        for i in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in pair]
    assert [p.returncode for p in pair] == [2, 2], errors
    assert "error: process 1 stopped before 'output checked': " in errors[0], errors[0]
    assert "nope" in errors[0] and "nope" in errors[1]


def test_two_processes_killed_and_resumed_write_what_one_process_writes(tmp_path):
    write_problems(tmp_path / "in.jsonl")
    one = subprocess.run(search_command(tmp_path, "one"), env=env(1), capture_output=True,
                         text=True)
    assert one.returncode == 0, one.stderr[-2000:]

    start = time.perf_counter()
    out = tmp_path / "two.jsonl"
    pair = launch_pair(tmp_path, "two")
    deadline = time.time() + 120
    while time.time() < deadline and all(p.poll() is None for p in pair) and \
            not any(p.read_text().count("\n") for p in shares.part_paths(out)):
        time.sleep(0.02)
    for p in pair:
        p.send_signal(signal.SIGKILL)
        p.wait()
    finished = shares.spread_finished_ids(out)
    assert 0 < len(finished) < PROBLEMS and not out.exists(), logs(tmp_path, "two")

    pair = launch_pair(tmp_path, "two")
    codes = [p.wait(timeout=120) for p in pair]
    assert codes == [0, 0], logs(tmp_path, "two")
    assert time.perf_counter() - start < 90
    for name in ("two.jsonl", "two-trees.jsonl"):
        assert list(records(tmp_path / name)) == [f"p{i}" for i in range(PROBLEMS)]
        assert records(tmp_path / name) == records(tmp_path / name.replace("two", "one"))
    assert not list(tmp_path.glob("*.part-*"))
