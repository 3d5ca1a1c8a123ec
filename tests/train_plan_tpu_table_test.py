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
    plans = [("sft", "tpu", PLAN), ("sft", "cpu", {"total_bytes": int(21.97 * GIB)}),
             ("big", "tpu", {"error": (
                 "error: config x does not fit 8 x TPU v5 lite: the compiler needs 20.77G per "
                 "device, the chip has 15.75G. Levers: ...")}),
             ("running", "cpu", {"total_bytes": GIB})]  # its TPU plan is not there yet
    path = tmp_path / "plans.jsonl"
    path.write_text("".join(json.dumps({"name": n, "target": t, "plan": p}) + "\n"
                            for n, t, p in plans))
    lines = train_plan_tpu_table.table(path).splitlines()
    assert len(lines) == 4 and all(line.count("|") == 11 for line in lines)
    assert lines[2] == "| big |  |  |  | refused: needs 20.77G |  |  |  |  |  |"
    assert lines[3] == ("| sft | 8 | fsdp 4 x tensor 2 | 8 x 2 | **14.13** (+1.62) | 1.53 | "
                        "21.97 | 9.54 | 3,434 | 78.2% |")


def test_rows_keep_the_order_of_the_per_plan_file_names(tmp_path):
    path = tmp_path / "plans.jsonl"
    path.write_text("".join(json.dumps({"name": n, "target": "tpu", "plan": PLAN})
                            + "\n" for n in ("dpo-v5e8", "dpo-v5e8-shipped", "claim")))
    names = [line.split(" | ")[0][2:] for line in
             train_plan_tpu_table.table(path).splitlines()[2:]]
    assert names == ["claim", "dpo-v5e8-shipped", "dpo-v5e8"]  # as "*-tpu.json" sorted


def test_the_committed_plans_give_the_table_of_benchmarks_md():
    root = pathlib.Path(__file__).resolve().parents[1]
    lines = train_plan_tpu_table.table(
        root / "benchmarks/results/train_plan_tpu/plans.jsonl").splitlines()
    assert len(lines) == 22
    benchmarks_md = (root / "BENCHMARKS.md").read_text(encoding="utf-8").splitlines()
    start = benchmarks_md.index(lines[0])
    assert benchmarks_md[start:start + len(lines)] == lines
