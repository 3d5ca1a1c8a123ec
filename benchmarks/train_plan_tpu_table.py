"""The TPU plans of ``benchmarks/train_plan_tpu.sh`` as one markdown table: per row,
the TPU compiler's per-device HBM plan beside XLA:CPU's plan of the same config,
and the step-time estimate.

    python benchmarks/train_plan_tpu_table.py [--dir benchmarks/results/train_plan_tpu]
"""

from __future__ import annotations

import argparse
import json
import pathlib

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


def table(directory: pathlib.Path) -> str:
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    for path in sorted(directory.glob("*-tpu.json")):
        if not path.stat().st_size:  # being written
            continue
        name = path.name[:-len("-tpu.json")]
        cpu_path = directory / f"{name}-cpu.json"
        cpu = (json.loads(cpu_path.read_text())
               if cpu_path.is_file() and cpu_path.stat().st_size else None)
        lines.append(row(name, json.loads(path.read_text()), cpu))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=pathlib.Path,
                        default=pathlib.Path("benchmarks/results/train_plan_tpu"))
    print(table(parser.parse_args().dir))


if __name__ == "__main__":
    main()
