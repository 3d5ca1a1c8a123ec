"""Search job configs: every key and type checked (one reader with the training
configs), --set overrides, and the named configs shipped inside the package."""

import dataclasses
import json
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

import marco_jax
from cli_test import ROOT, assert_one_line_error, run_script
from marco_jax import run_config
from marco_jax.errors import MarcoError
from marco_jax.search.config import JobConfig, SearchConfig, load_job_config
from marco_jax.run_config import build

GOOD = {"description": "a test config", "template": "marco", "final": "most_visited",
        "stop": ["</Output>"], "search": {"action": "mini_step", "children": 2, "iterations": 3}}


def write(tmp_path, raw: dict):
    path = tmp_path / "job.json"
    path.write_text(json.dumps(raw))
    return path


def test_a_good_file_loads(tmp_path):
    job = load_job_config(str(write(tmp_path, GOOD)))
    assert isinstance(job, JobConfig) and job.name == "job" and job.description == "a test config"
    assert job.final == "most_visited" and job.stop == ("</Output>",)
    assert job.search == SearchConfig(action="mini_step", children=2, iterations=3)


@pytest.mark.parametrize("change, message", [
    ({"finall": "vote"}, "unknown key(s) finall (known: action_tree, description, final, search, stop, "
                         "template)"),
    ({"search": {**GOOD["search"], "childern": 8}}, "[search]: unknown key(s) childern"),
    ({"search": {**GOOD["search"], "children": "4"}}, "[search]: children must be int, got '4'"),
    ({"search": {**GOOD["search"], "iterations": True}}, "iterations must be int, got True"),
    ({"search": {**GOOD["search"], "c_uct": "1.0"}}, "c_uct must be float, got '1.0'"),
    ({"search": {**GOOD["search"], "reflection": 1}}, "reflection must be bool, got 1"),
    ({"search": {**GOOD["search"], "children": 0}}, "[search]: children must be >= 1, got 0"),
    ({"search": {**GOOD["search"], "temperature": -0.5}},
     "[search]: temperature must be >= 0, got -0.5"),
    ({"search": 4}, "search must be a section"),
    ({"final": "best"}, "final must be one of most_visited, max_value, vote, got 'best'"),
    ({"template": "llama"}, "template must be one of marco, chat, none, got 'llama'"),
    ({"stop": "</Output>"}, "stop must be a list of str, got '</Output>'"),
    ({"stop": ["</Output>", 3]}, "stop must be a list of str"),
    ({"stop": ["</Output>", ""]}, "stop must be a list of non-empty strings"),
    ({"name": "other"}, "unknown key(s) name"),
])
def test_bad_files_name_the_key(tmp_path, change, message):
    path = write(tmp_path, {**GOOD, **change})
    with pytest.raises(MarcoError, match=re.escape(f"{path}") + ".*" + re.escape(message)):
        load_job_config(str(path))


def test_overrides_apply_in_order_then_keywords():
    base = load_job_config("mcts-step")
    assert (base.final, base.search.children, base.search.temperature) == ("most_visited", 4, 0.7)
    job = load_job_config("mcts-step", ["final=vote", "search.children=2",
                                        "search.temperature=1", "search.children=3",
                                        "stop=[\"</Output>\", \"\\n\\n\\n\"]"], iterations=5)
    assert job.final == "vote" and job.search.children == 3 and job.search.iterations == 5
    assert job.search.temperature == 1.0 and isinstance(job.search.temperature, float)
    assert job.stop == ("</Output>", "\n\n\n")
    assert job.search.action == base.search.action == "step"  # the rest is the file's
    assert load_job_config("cot", ["search.action=step"]).search.action == "step"  # raw string


@pytest.mark.parametrize("overrides, keywords, message", [
    (["search.childern=2"], {}, "--set search.childern=2: unknown key(s) childern"),
    (["finall=vote"], {}, "unknown key(s) finall"),
    (["children=2"], {}, "unknown key(s) children"),
    (["search.children=two"], {}, "children must be int, got 'two'"),
    (["search.iterations=true"], {}, "iterations must be int, got True"),
    (["final=best"], {}, "final must be one of"),
    (["final.x=1"], {}, "final is not a section"),
    (["search"], {}, "expected key=value or search.key=value"),
    ([], {"iteration": 2}, "unknown key(s) iteration"),
    ([], {"iterations": "2"}, "iterations must be int, got '2'"),
    # Numbers outside their declared range name the override (or keyword) that set them.
    (["search.temperature=-1"], {}, "--set search.temperature=-1: temperature must be >= 0, "
                                    "got -1.0"),
    (["search.top_p=0"], {}, "--set search.top_p=0: top_p must be in (0, 1], got 0.0"),
    (["search.top_k=-1"], {}, "top_k must be >= 0, got -1"),
    (["search.c_uct=-1"], {}, "c_uct must be >= 0, got -1.0"),
    (["search.token_budget=-5"], {}, "token_budget must be >= 0, got -5"),
    (["search.call_tokens=0"], {}, "call_tokens must be >= 1, got 0"),
    (["search.reward_weight=2"], {}, "reward_weight must be in [0, 1], got 2.0"),
    (["search.seed=-1"], {}, "seed must be >= 0, got -1"),
    ([], {"iterations": 0}, "iterations=0: iterations must be >= 1, got 0"),
])
def test_bad_overrides_name_the_key(overrides, keywords, message):
    with pytest.raises(MarcoError, match=re.escape(message)):
        load_job_config("mcts-step", overrides, **keywords)


def test_search_configs_built_in_code_are_range_checked():
    with pytest.raises(MarcoError, match=re.escape("children must be >= 1, got 0")):
        SearchConfig(children=0)
    with pytest.raises(MarcoError, match=re.escape("temperature must be >= 0, got -0.1")):
        dataclasses.replace(SearchConfig(), temperature=-0.1)


def test_settings_types():
    @dataclasses.dataclass(frozen=True)
    class Inner:
        rate: float = 0.5
        path: str | None = None
        tags: tuple[str, ...] = ()

    @dataclasses.dataclass(frozen=True)
    class Outer:
        name: str
        count: int = 1
        inner: Inner = Inner()

    cfg = build(Outer, {"count": 3, "inner": {"rate": 2, "path": None, "tags": ["a", "b"]}},
                "here", name="n")
    assert cfg == Outer("n", 3, Inner(2.0, None, ("a", "b")))
    assert isinstance(cfg.inner.rate, float)
    for values, message in [({"count": 2.0}, "here: count must be int, got 2.0"),
                            ({"count": None}, "count must be int, got None"),
                            ({"inner": {"path": 3}}, "here [inner]: path must be str or null"),
                            ({"inner": {"rate": False}}, "rate must be float, got False"),
                            ({"inner": {"tag": []}}, "here [inner]: unknown key(s) tag "
                                                     "(known: path, rate, tags)"),
                            ({"name": "x"}, "unknown key(s) name (known: count, inner)")]:
        with pytest.raises(MarcoError, match=re.escape(message)):
            build(Outer, values, "here", name="n")


def test_cli_set_reaches_the_config(tmp_path):
    problems = tmp_path / "in.jsonl"
    problems.write_text('{"id": "p0", "question": "What is 1+1?", "answer": "2"}\n')
    proc = run_script("search.py", "--config", "cot", "--input", str(problems),
                      "--output", str(tmp_path / "out.jsonl"), "--set", "search.childern=2")
    assert_one_line_error(proc, "unknown key(s) childern")
    proc = run_script("eval_mgsm.py", "--data", str(problems), "--method", "cot",
                      "--out-dir", str(tmp_path), "--set", "finall=vote")
    assert_one_line_error(proc, "unknown key(s) finall")


def test_named_configs_are_package_data(tmp_path):
    """A wheel (what a non-editable install unpacks) holds the named configs, and the
    package reads them from inside itself."""
    assert run_config.CONFIGS == pathlib.Path(marco_jax.__file__).resolve().parent / "configs"
    assert (ROOT / "configs").resolve() == run_config.CONFIGS  # the top-level link
    source = tmp_path / "src"  # a copy, so no stale build/ of the checkout leaks in
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "marco_jax", source / "marco_jax",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "--no-index", "-q", "-w",
                           str(tmp_path / "wheels"), str(source)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "wheels").glob("marco_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"marco_jax/configs/search/mcts-step.json", "marco_jax/configs/train/tiny_sft.json",
            "marco_jax/configs/train/data/cot_demo_24.json",  # tiny_sft's data
            "marco_jax/run_config.py", "marco_jax/search/config.py"} <= names
