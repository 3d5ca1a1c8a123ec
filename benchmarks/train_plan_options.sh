#!/bin/bash
# Per-device memory plan of qwen2_7b_sft (sequence 4096) for N = 8..64 devices,
# with the memory options off and on (issue 15). All plans are JSON lines in
# benchmarks/results/train_plan/plans.jsonl, one plan a line:
# {"name": "N-OPTIONS", "plan": the dry run's JSON}. A plan already there is
# skipped (delete its line to plan it again); the N = 8 rows with other
# meshes (8-fsdpF-tensorT-OPTIONS) were planned by hand with --mesh.
#   bash benchmarks/train_plan_options.sh
set -euo pipefail
out=benchmarks/results/train_plan; mkdir -p "$out"
plans=$out/plans.jsonl
tmp=$(mktemp); trap 'rm -f "$tmp"' EXIT
declare -A options=(
  [default]=""
  [bf16-moments-acc]="--set train.moments_dtype=bfloat16 --set train.accumulate_dtype=bfloat16"
  [adafactor-bf16-acc]="--set train.optimizer=adafactor --set train.accumulate_dtype=bfloat16"
  [offload]="--set train.offload_optimizer=true"
)
for n in 8 16 32 64; do
  micro=$((64 / n))
  for name in default bf16-moments-acc adafactor-bf16-acc offload; do
    if [ -f "$plans" ] && grep -qF "{\"name\": \"$n-$name\"," "$plans"; then continue; fi
    # shellcheck disable=SC2086
    python scripts/train.py --config qwen2_7b_sft --dry-run --simulate-devices "$n" --mesh "fsdp=$n" \
      --set train.micro_batches=$micro ${options[$name]} > "$tmp"
    python -c 'import json, sys
print(json.dumps({"name": sys.argv[1], "plan": json.load(open(sys.argv[2]))}))' \
      "$n-$name" "$tmp" >> "$plans"
  done
done
