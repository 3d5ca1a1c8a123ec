"""Every command is installed as a console command by ``pip install -e .`` and answers
``--help``; each has its ``scripts/NAME.py`` wrapper, and each module is a command."""

import pathlib
import subprocess
import sys
import tomllib

from cli_test import ROOT, run_script

COMMANDS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_each_command_module_is_installed_and_has_its_script():
    modules = {p.stem for p in (ROOT / "marco_jax" / "commands").glob("*.py")} - {"__init__"}
    assert {f"marco-jax-{m.replace('_', '-')}" for m in modules} == set(COMMANDS)
    assert {target for target in COMMANDS.values()} == {
        f"marco_jax.commands.{m}:cli" for m in modules}
    assert {p.stem for p in (ROOT / "scripts").glob("*.py")} == modules


def test_each_console_command_answers_help():
    bin_dir = pathlib.Path(sys.executable).parent
    runs = {name: subprocess.Popen([str(bin_dir / name), "--help"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for name in COMMANDS}
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (name, err)
        assert out.startswith(f"usage: {name}") and "--help" in out, (name, out)


def test_a_script_wrapper_runs_its_command():
    proc = run_script("show_tree.py", "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: show_tree.py")
    assert "self-contained HTML page" in proc.stdout
