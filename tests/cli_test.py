"""The command-line tools end to end, including one-line errors on bad input."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from conftest import build_hf_model, save_hf

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, stdin: str | None = None,
               env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], input=stdin,
                          capture_output=True, text=True, timeout=300, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr


def test_score_builtin_json():
    proc = run_script("score.py", "--model", "builtin:tiny", "--text", "héllo wörld",
                      "--top-logprobs", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["num_tokens"] == len("héllo wörld".encode())
    assert out["tokens"][0]["logprob"] is None
    top = out["tokens"][1]["top_logprobs"]
    assert len(top) == 5 and top[0]["logprob"] >= top[-1]["logprob"]
    total = sum(t["logprob"] for t in out["tokens"][1:])
    assert out["total_logprob"] == pytest.approx(total, abs=1e-3)


def test_score_chat_from_file(hf_checkpoint, tmp_path):
    _, path = hf_checkpoint
    (tmp_path / "t.txt").write_text("What is 2+3?")
    proc = run_script("score.py", "--model", str(path), "--text-file", str(tmp_path / "t.txt"),
                      "--chat", "--json")
    assert proc.returncode == 0, proc.stderr
    text = "".join(t["text"] for t in json.loads(proc.stdout)["tokens"])
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")


def test_convert_cli_round_trip(hf_checkpoint, tmp_path):
    _, path = hf_checkpoint
    proc = run_script("convert.py", "hf-to-orbax", "--src", str(path), "--dst", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    proc = run_script("convert.py", "orbax-to-hf", "--src", str(tmp_path / "o"),
                      "--dst", str(tmp_path / "h"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "h" / "model.safetensors").is_file()


def test_missing_path(tmp_path):
    proc = run_script("score.py", "--model", str(tmp_path / "nope"), "--text", "hi")
    assert_one_line_error(proc, "no such file or directory")
    proc = run_script("convert.py", "hf-to-orbax", "--src", str(tmp_path / "nope"),
                      "--dst", str(tmp_path / "o"))
    assert_one_line_error(proc, "no such file or directory")


def test_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    proc = run_script("score.py", "--model", str(tmp_path), "--text", "hi")
    assert_one_line_error(proc, "not a checkpoint directory")
    proc = run_script("convert.py", "hf-to-orbax", "--src", str(tmp_path), "--dst", str(tmp_path / "o"))
    assert_one_line_error(proc, "not an HF checkpoint directory")


@pytest.fixture(scope="module")
def one_checkpoint(tmp_path_factory):
    """One HF checkpoint: file and config errors do not depend on the head's tying."""
    return save_hf(build_hf_model(tied=True), tmp_path_factory.mktemp("hf"))


def test_unsupported_config_feature(one_checkpoint, tmp_path):
    path = one_checkpoint
    cfg = json.loads((path / "config.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").symlink_to(path / "model.safetensors")
    (bad / "config.json").write_text(json.dumps(cfg | {"use_sliding_window": True}))
    assert_one_line_error(run_script("score.py", "--model", str(bad), "--text", "hi"),
                          "sliding-window attention")
    (bad / "config.json").write_text(json.dumps(cfg | {"rope_scaling": {"type": "yarn", "factor": 4.0}}))
    assert_one_line_error(run_script("score.py", "--model", str(bad), "--text", "hi"),
                          "RoPE scaling of type 'yarn'")
    llama = {k: v for k, v in cfg.items() if k != "model_type"} | {
        "architectures": ["LlamaForCausalLM"]}
    (bad / "config.json").write_text(json.dumps(llama))
    assert_one_line_error(run_script("convert.py", "hf-to-orbax", "--src", str(bad),
                                     "--dst", str(tmp_path / "o")),
                          "architectures=['LlamaForCausalLM'] is not supported")


def test_truncated_safetensors(one_checkpoint, tmp_path):
    path = one_checkpoint
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((path / "config.json").read_text())
    data = (path / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_script("score.py", "--model", str(bad), "--text", "hi"),
                          "unreadable safetensors file")
    assert_one_line_error(run_script("convert.py", "hf-to-orbax", "--src", str(bad),
                                     "--dst", str(tmp_path / "o")), "unreadable safetensors file")


def test_bad_text_file_and_arguments(tmp_path):
    assert_one_line_error(run_script("score.py", "--text-file", str(tmp_path / "none.txt")),
                          "no such file")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    assert_one_line_error(run_script("score.py", "--text-file", str(tmp_path / "bin.txt")),
                          "not UTF-8")
    assert_one_line_error(run_script("score.py", "--text", "hi", "--top-logprobs", "0"),
                          "top-logprobs")
    assert_one_line_error(run_script("score.py", "--model", "builtin:huge", "--text", "hi"),
                          "unknown model preset")


def test_generate_builtin_json_with_timing(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "2+3="}\n{"prompt": "héllo"}\n\n{"prompt": "x"}\n')
    proc = run_script("generate.py", "--prompts-file", str(tmp_path / "p.jsonl"), "--chat",
                      "--max-new-tokens", "6", "--temperature", "0.8", "--top-p", "0.9",
                      "--slots", "2", "--seed", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [g["prompt"] for g in out["generations"]] == ["2+3=", "héllo", "x"]
    for g in out["generations"]:
        assert 1 <= g["num_tokens"] <= 6 and len(g["tokens"]) == g["num_tokens"]
        assert g["finish_reason"] in ("eos", "length")
        assert len(g["tokens"][0]["top_logprobs"]) == 5
    assert set(out["timing"]) >= {"load_s", "compile_s", "prefill_s", "decode_s",
                                  "decode_tokens_per_s"}
    # Prompt 3 has seed 3 + 2 whether it shares two slots with others or runs alone.
    alone = run_script("generate.py", "--prompt", "x", "--chat", "--max-new-tokens", "6",
                       "--temperature", "0.8", "--top-p", "0.9", "--seed", "5", "--json")
    alone_tokens = json.loads(alone.stdout)["generations"][0]["tokens"]
    assert [t["id"] for t in alone_tokens] == [t["id"] for t in out["generations"][2]["tokens"]]
    assert [t["logprob"] for t in alone_tokens] == pytest.approx(
        [t["logprob"] for t in out["generations"][2]["tokens"]], abs=1e-5)


def test_generate_text_output_and_errors(tmp_path):
    proc = run_script("generate.py", "--prompt", "abc", "--max-new-tokens", "4", "--stop", "zz")
    assert proc.returncode == 0 and proc.stdout.startswith("=== 1:"), proc.stderr
    assert "tokens/s" in proc.stderr
    assert_one_line_error(run_script("generate.py", "--prompt", ""),
                          "--prompt: the prompt is empty")
    assert_one_line_error(run_script("generate.py", "--prompt", "a" * 3000),
                          "--prompt: the prompt has 3000 tokens and --max-new-tokens asks for "
                          "128 more; the context (--max-model-len) is 2048 tokens")
    # Bad engine settings (slots, temperature, top_p) are the engine's errors:
    # engine_test.test_bad_requests_are_errors; here only that they reach one line.
    assert_one_line_error(run_script("generate.py", "--prompt", "a", "--top-p", "2"), "top_p")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\nnot json\n')
    assert_one_line_error(run_script("generate.py", "--prompts-file", str(tmp_path / "bad.jsonl")),
                          "bad.jsonl:2: expected a JSON object with a 'prompt' field")


@pytest.mark.parametrize("text, message", [
    # Line numbers are the file's own, blank lines counted, from 1.
    ('{"prompt": "ok"}\n\n\nnot json\n', "p.jsonl:4: expected a JSON object with a 'prompt' "
                                         "field"),
    ('{"prompt": "ok"}\n{"prompt": null}\n', "p.jsonl:2: the 'prompt' field must be a string, "
                                           "got null"),
    ('\n{"prompt": 42}\n', "p.jsonl:2: the 'prompt' field must be a string, got 42"),
    ('{"prompt": ""}\n', "p.jsonl:1: the prompt is empty"),
    ('\n{"prompt": "%s"}\n' % ("a" * 3000), "p.jsonl:2: the prompt has 3000 tokens"),
])
def test_generate_names_the_input_line(tmp_path, text, message):
    (tmp_path / "p.jsonl").write_text(text)
    assert_one_line_error(run_script("generate.py", "--prompts-file", str(tmp_path / "p.jsonl")),
                          message)


# What --help must not import: JAX, the model, engine, search and server code (seconds).
HEAVY = ("jax", "torch", "flax", "transformers", "marco_jax.loading", "marco_jax.model",
         "marco_jax.engine.engine", "marco_jax.search.runner", "marco_jax.serve.app")


@pytest.mark.parametrize("script, option", [
    ("generate.py", "--prompts-file"), ("serve.py", "--admit-wait-ms"),
    ("search.py", "--trees-in-flight"), ("eval_mgsm.py", "--method")])
def test_help_does_not_wait_for_jax(script, option):
    code = ("import runpy, sys\n"
            f"sys.argv = [{str(ROOT / 'scripts' / script)!r}, '--help']\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('imported:', *sorted(sys.modules), file=sys.stderr)\n")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    took = time.perf_counter() - start
    assert proc.returncode == 0 and option in proc.stdout, proc.stderr
    assert "tokens per KV cache block" in proc.stdout
    imported = proc.stderr.splitlines()[-1].split()[1:]
    found = [m for m in imported if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert not found, f"--help imported {found[:6]}"
    assert took < 5, f"--help took {took:.1f} s"


@pytest.mark.parametrize("jax_first", [False, True], ids=["before-jax", "after-jax"])
def test_scripts_keep_compiled_programs_on_disk(tmp_path, jax_first):
    """Tools turn the cache on before JAX is imported (it is not, for --help); benchmarks after."""
    code = ("import jax\n" * jax_first +
            "from marco_jax.cli import enable_compilation_cache\n"
            "enable_compilation_cache()\n"
            "import jax, jax.numpy as jnp\n"
            "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)\n"
            "jax.jit(lambda x: x @ x.T)(jnp.ones((8, 8))).block_until_ready()\n")
    env = {**os.environ, "MARCO_JAX_COMPILATION_CACHE": str(tmp_path / "xla")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert any((tmp_path / "xla").iterdir())


def test_export_data_with_nothing_to_write_is_one_line(tmp_path):
    assert_one_line_error(run_script("export_data.py", "--trees", str(tmp_path / "t.jsonl")),
                          "error: nothing to write: give --sft and/or --pairs")
