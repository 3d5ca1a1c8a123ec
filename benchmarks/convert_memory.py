"""Peak host memory (RSS) and bit-exactness of checkpoint conversion on a real model.

    python benchmarks/convert_memory.py --hf-dir HF_DIR [--gguf FILE.gguf] \
        --work-dir /tmp/convert-bench --json-out results/convert_memory.json

Runs each ``scripts/convert.py`` command in a child process and reads the child's
peak RSS (``ru_maxrss``); the target is <= 1.5x the float32 model size. Then
checks that HF -> Orbax -> HF reproduced every tensor bit for bit.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
from safetensors import safe_open

from report import report

from marco_jax.model_config import load_hf_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def peak_rss_of(command: list[str]) -> tuple[float, float]:
    """(peak RSS in bytes, seconds) of one child process run to completion."""
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"{' '.join(command)} failed with status {status}")
    return usage.ru_maxrss * 1024, time.perf_counter() - start


def tensors_equal(a_dir: pathlib.Path, b_dir: pathlib.Path) -> tuple[int, list[str]]:
    """(number of tensors compared, names that differ), reading one tensor at a time."""
    def index(d):
        files = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(str(f), "np") as h:
                files.update({k: f for k in h.keys()})
        return files

    a, b = index(a_dir), index(b_dir)
    differ = sorted(set(a) ^ set(b))
    for name in sorted(set(a) & set(b)):
        with safe_open(str(a[name]), "np") as ha, safe_open(str(b[name]), "np") as hb:
            x, y = ha.get_tensor(name), hb.get_tensor(name)
            if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y):
                differ.append(name)
    return len(set(a) & set(b)), differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf-dir", required=True, type=pathlib.Path)
    parser.add_argument("--gguf", type=pathlib.Path)
    parser.add_argument("--work-dir", type=pathlib.Path, default=pathlib.Path("/tmp/convert-bench"))
    parser.add_argument("--json-out", type=pathlib.Path)
    args = parser.parse_args()

    shutil.rmtree(args.work_dir, ignore_errors=True)
    args.work_dir.mkdir(parents=True)
    fp32_bytes = load_hf_config(args.hf_dir).num_params() * 4
    convert = [sys.executable, str(ROOT / "scripts" / "convert.py")]
    runs = {
        "hf-to-orbax": [*convert, "hf-to-orbax", "--src", str(args.hf_dir), "--dst", str(args.work_dir / "orbax")],
        "orbax-to-hf": [*convert, "orbax-to-hf", "--src", str(args.work_dir / "orbax"), "--dst", str(args.work_dir / "hf")],
    }
    if args.gguf:
        runs["gguf-to-orbax"] = [*convert, "gguf-to-orbax", "--src", str(args.gguf), "--dst", str(args.work_dir / "gguf-orbax")]
    results = {"fp32_model_bytes": fp32_bytes, "runs": {}}
    for name, command in runs.items():
        rss, seconds = peak_rss_of(command)
        results["runs"][name] = {"peak_rss_bytes": rss, "peak_rss_over_fp32_model": rss / fp32_bytes,
                                 "seconds": seconds}
    compared, differ = tensors_equal(args.hf_dir, args.work_dir / "hf")
    results["round_trip"] = {"tensors_compared": compared, "tensors_differing": differ,
                             "bit_exact": not differ}
    report(results, args.json_out)


if __name__ == "__main__":
    main()
