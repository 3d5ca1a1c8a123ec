#!/bin/bash
# The engine compiled for TPU topologies by libtpu, ahead of time, on this CPU host
# (issue 33): the demo model's shape (preset qwen2-0.5b, the shape of
# Qwen2.5-Coder-0.5B) and Qwen2-7B in bf16, on v5e-8 (v5e:2x4) and v5p-8 (v5p:2x2x1),
# decode compiled for 1, 8 and 64 slots at every table width, prefill at every shape
# and width. One JSON plan per row in benchmarks/results/engine_plan_tpu/NAME.json, the
# compile log in NAME.log, the table in table.md. Resumable: a saved plan is skipped.
#   PATH=.venv/bin:$PATH bash benchmarks/engine_plan_tpu.sh
set -euo pipefail
out=benchmarks/results/engine_plan_tpu; mkdir -p "$out"
# name | preset | topology
rows=(
  "demo-v5e8|qwen2-0.5b|v5e:2x4"
  "demo-v5p8|qwen2-0.5b|v5p:2x2x1"
  "7b-v5e8|qwen2-7b|v5e:2x4"
  "7b-v5p8|qwen2-7b|v5p:2x2x1"
)
plans=()
for row in "${rows[@]}"; do
  IFS='|' read -r name model topo <<< "$row"
  plans+=("$out/$name.json")
  [ -s "$out/$name.json" ] && continue
  python scripts/plan_engine.py --preset "$model" --topology "$topo" --slots 1,8,64 \
    --json-out "$out/$name.json" > /dev/null 2> "$out/$name.log"
done
python scripts/plan_engine.py --table "${plans[@]}" > "$out/table.md"
