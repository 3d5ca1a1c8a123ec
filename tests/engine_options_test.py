"""The engine's command-line options: written out so that --help needs no JAX, and
kept equal to the engine's own choices and defaults."""

import subprocess
import sys

from marco_jax.engine import engine, options, scheduler


def test_choices_and_defaults_are_the_engines():
    assert options.KV_DTYPES == engine.KV_DTYPES
    assert options.POLICIES == scheduler.POLICIES
    defaults = engine.EngineConfig()
    assert options.DEFAULTS == {name: getattr(defaults, name) for name in options.DEFAULTS}


def test_options_and_cli_do_not_import_jax():
    code = ("import sys, argparse\n"
            "from marco_jax import cli\n"
            "from marco_jax.engine import options\n"
            "options.add_engine_args(argparse.ArgumentParser())\n"
            "cli.enable_compilation_cache()\n"
            "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith('jax.')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
