"""scripts/self_improve.sh's plumbing: stage order, the settings each stage gets, the
DPO pairs it assembles, and skipping finished stages on a rerun. The stages' own
scripts are replaced by a stub that records its arguments and writes the outputs
the next stage reads (each script has its own tests)."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
STUB = '''#!{python}
import json, pathlib, sys
script, args = pathlib.Path(sys.argv[1]).name, sys.argv[2:]
with open({log!r}, "a") as log:
    log.write(json.dumps([script, *args]) + "\\n")
def value(flag):
    return [args[i + 1] for i, a in enumerate(args) if a == flag]
if script == "search.py":
    pathlib.Path(value("--output")[0]).write_text("{{}}\\n")
    pathlib.Path(value("--trees")[0]).write_text("{{}}\\n")
elif script == "export_data.py":
    for flag in ("--sft", "--pairs"):
        for path in value(flag):
            pathlib.Path(path).write_text(json.dumps({{flag: value("--trees")}}) + "\\n")
elif script == "train.py":
    sets = dict(s.split("=", 1) for s in value("--set"))
    pathlib.Path(sets["output_dir"], "final").mkdir(parents=True)
elif script == "eval_mgsm.py":
    print("{{}}")
'''


def run_loop(tmp_path: pathlib.Path, **env: str) -> list[list[str]]:
    """Run the pipeline with stubbed stages; the stub calls it made, in order."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "python"
    stub.write_text(STUB.format(python=sys.executable, log=str(log)))
    stub.chmod(0o755)
    log.write_text("")
    proc = subprocess.run(
        ["bash", "scripts/self_improve.sh", "MODEL", "DATA", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env})
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


def settings(call: list[str]) -> dict[str, str]:
    return dict(call[i + 1].split("=", 1) for i, a in enumerate(call) if a == "--set")


def flag(call: list[str], name: str) -> list[str]:
    return [call[i + 1] for i, a in enumerate(call) if a == name]


def test_stages_run_in_order_and_dpo_gets_the_pairs_against_unfinished_chains(tmp_path):
    work = tmp_path / "work"
    calls = run_loop(tmp_path)
    assert [c[0] for c in calls[:6]] == ["search.py", "export_data.py", "train.py",
                                        "search.py", "export_data.py", "train.py"]
    sft, cot, cut, dpo = calls[2], calls[3], calls[4], calls[5]
    assert settings(sft)["model.init_from"] == "MODEL"
    # the SFT model's greedy chains under the evaluation's prompt and budget
    assert flag(cot, "--model") == [f"{work}/sft/final"] and flag(cot, "--config") == ["cot"]
    assert {"search.max_tokens=384", "search.call_tokens=384"} <= set(flag(cot, "--set"))
    assert flag(cut, "--trees") == [f"{work}/trees-base.jsonl", f"{work}/trees-sft-cot.jsonl"]
    assert flag(cut, "--rejected") == ["unfinished"] and flag(cut, "--max-pairs-per-tree") == ["3"]
    assert settings(dpo)["model.init_from"] == f"{work}/sft/final"
    assert settings(dpo)["data.path"] == f"{work}/dpo-pairs.jsonl"
    assert settings(dpo)["data.seq_len"] == "768"
    rows = [json.loads(line) for line in (work / "dpo-pairs.jsonl").read_text().splitlines()]
    assert rows == [{"--pairs": [f"{work}/trees-base.jsonl"]},  # the base pairs, then the new ones
                    {"--pairs": [f"{work}/trees-base.jsonl", f"{work}/trees-sft-cot.jsonl"]}]
    evals = [c for c in calls if c[0] == "eval_mgsm.py"]
    assert len(evals) == 18  # 3 methods x 2 languages x 3 models
    assert flag(evals[2], "--model") == [f"{work}/dpo/final"]
    assert flag(evals[2], "--tag") == ["dpo-marco384"]
    assert (work / "eval" / "summary-zh-mcts-step-dpo.json").read_text() == "{}\n"

    # Finished stages are skipped; only the base search runs (it resumes on its own).
    again = run_loop(tmp_path)
    assert [c[0] for c in again] == ["search.py"]


def test_without_cut_pairs_dpo_trains_on_the_search_pairs(tmp_path):
    calls = run_loop(tmp_path, CUT_PAIRS="0", SAMPLING="1", EVAL_METHODS="cot-marco")
    dpo = [c for c in calls if c[0] == "train.py"][1]
    assert settings(dpo)["data.path"] == f"{tmp_path}/work/base-mix-pairs.jsonl"
    assert not [c for c in calls if "cot" in flag(c, "--config")]
    assert len([c for c in calls if c[0] == "eval_mgsm.py"]) == 6
