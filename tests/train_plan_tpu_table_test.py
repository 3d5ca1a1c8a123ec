"""The TPU plan table: a fitting plan with its estimate, a refused plan, a row in progress."""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import train_plan_tpu_table  # noqa: E402

GIB = 2**30
PLAN = {"devices": 8, "mesh": {"data": 1, "fsdp": 4, "tensor": 2}, "micro_batches": 8,
        "rows_per_device": 2, "total_bytes": int(14.13 * GIB), "headroom_bytes": int(1.62 * GIB),
        "device_host_memory_bytes": int(1.53 * GIB),
        "estimate": {"step_seconds": 9.544, "tokens_per_second_per_chip": 3433.6, "mfu": 0.7818}}


def test_rows_from_plans(tmp_path):
    (tmp_path / "sft-tpu.json").write_text(json.dumps(PLAN))
    (tmp_path / "sft-cpu.json").write_text(json.dumps({"total_bytes": int(21.97 * GIB)}))
    (tmp_path / "big-tpu.json").write_text(json.dumps({"error": (
        "error: config x does not fit 8 x TPU v5 lite: the compiler needs 20.77G per device, "
        "the chip has 15.75G. Levers: ...")}))
    (tmp_path / "running-tpu.json").write_text("")
    lines = train_plan_tpu_table.table(tmp_path).splitlines()
    assert len(lines) == 4 and all(line.count("|") == 11 for line in lines)
    assert lines[2] == "| big |  |  |  | refused: needs 20.77G |  |  |  |  |  |"
    assert lines[3] == ("| sft | 8 | fsdp 4 x tensor 2 | 8 x 2 | **14.13** (+1.62) | 1.53 | "
                        "21.97 | 9.54 | 3,434 | 78.2% |")
