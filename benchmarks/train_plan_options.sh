#!/bin/bash
# Per-device memory plan of qwen2_7b_sft (sequence 4096) for N = 8..64 devices,
# with the memory options off and on (issue 15). One JSON per run in
# benchmarks/results/train_plan/N-OPTIONS.json.
#   bash benchmarks/train_plan_options.sh
set -euo pipefail
out=benchmarks/results/train_plan; mkdir -p "$out"
declare -A options=(
  [default]=""
  [bf16-moments-acc]="--set train.moments_dtype=bfloat16 --set train.accumulate_dtype=bfloat16"
  [adafactor-bf16-acc]="--set train.optimizer=adafactor --set train.accumulate_dtype=bfloat16"
  [offload]="--set train.offload_optimizer=true"
)
for n in 8 16 32 64; do
  micro=$((64 / n))
  for name in default bf16-moments-acc adafactor-bf16-acc offload; do
    # shellcheck disable=SC2086
    python scripts/train.py --config qwen2_7b_sft --dry-run --simulate-devices "$n" --mesh "fsdp=$n" \
      --set train.micro_batches=$micro ${options[$name]} > "$out/$n-$name.json"
  done
done
