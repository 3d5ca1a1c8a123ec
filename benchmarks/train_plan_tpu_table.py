"""The TPU plans of ``benchmarks/train_plan_tpu.sh`` as one markdown table: per row,
the TPU compiler's per-device HBM plan beside XLA:CPU's plan of the same config,
and the step-time estimate.

    python benchmarks/train_plan_tpu_table.py \
        [--plans benchmarks/results/train_plan_tpu/plans.jsonl]

Reads the script's JSON lines ({"name", "target": "tpu" or "cpu", "plan"}); a
row is listed once its TPU plan is there, ordered by ``NAME-tpu.json`` (the
names of the per-plan files the plans were first kept in).
"""

from __future__ import annotations

import argparse
import json
import pathlib

from marco_jax.files import lines as split_lines

GIB = 2**30
HEADER = ("| run | chips | mesh | micro-batches x rows/device | TPU compiler GiB/device "
          "(headroom) | in host memory GiB | XLA:CPU GiB/device | est. step s | "
          "tokens/s/chip | MFU (upper bound) |")


def _mesh(plan: dict) -> str:
    return " x ".join(f"{axis} {size}" for axis, size in plan["mesh"].items() if size > 1)


def row(name: str, tpu: dict, cpu: dict | None) -> str:
    """One markdown row; a plan the compiler refused shows what it needs."""
    cells = [name] + [""] * 9
    cells[6] = f"{cpu['total_bytes'] / GIB:.2f}" if cpu else ""
    if "error" in tpu:
        cells[4] = "refused: needs " + tpu["error"].split("compiler needs ")[1].split(" per")[0]
        return "| " + " | ".join(cells) + " |"
    cells[1:6] = [str(tpu["devices"]), _mesh(tpu),
                  f"{tpu['micro_batches']} x {tpu['rows_per_device']}",
                  f"**{tpu['total_bytes'] / GIB:.2f}** ({tpu['headroom_bytes'] / GIB:+.2f})",
                  f"{tpu.get('device_host_memory_bytes', 0) / GIB:.2f}"]
    estimate = tpu.get("estimate")
    if estimate:
        cells[7:] = [f"{estimate['step_seconds']:.2f}",
                     f"{estimate['tokens_per_second_per_chip']:,.0f}",
                     f"{100 * estimate['mfu']:.1f}%"]
    return "| " + " | ".join(cells) + " |"


def table(plans: pathlib.Path) -> str:
    found: dict[tuple[str, str], dict] = {}
    for line in split_lines(plans.read_text(encoding="utf-8")):
        if line:
            record = json.loads(line)
            found[record["name"], record["target"]] = record["plan"]
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    names = sorted((n for n, target in found if target == "tpu"), key=lambda n: f"{n}-tpu.json")
    for name in names:
        lines.append(row(name, found[name, "tpu"], found.get((name, "cpu"))))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=pathlib.Path,
                        default=pathlib.Path("benchmarks/results/train_plan_tpu/plans.jsonl"))
    args = parser.parse_args()
    if not args.plans.is_file():
        parser.error(f"--plans {args.plans}: no such file")
    print(table(args.plans))


if __name__ == "__main__":
    main()
