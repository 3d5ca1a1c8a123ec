#!/bin/bash
# Qwen2-7B SFT and DPO planned by the TPU compiler (libtpu, ahead of time, on this
# CPU host) for v5e-8, v5p-8, a multi-host v5p-64 and two v5p-8 slices, each
# with its step-time / MFU estimate, beside XLA:CPU's plan of the same config on
# as many simulated devices (issue 31). All plans are JSON lines in
# benchmarks/results/train_plan_tpu/plans.jsonl, one plan a line:
# {"name": NAME, "target": "tpu" or "cpu", "plan": the dry run's JSON}; each
# row's log (the one-line summaries) is a "== NAME ==" section of plans.log.
# Resumable: a plan already in plans.jsonl is skipped.
#   PATH=.venv/bin:$PATH bash benchmarks/train_plan_tpu.sh
set -uo pipefail
out=benchmarks/results/train_plan_tpu; mkdir -p "$out"
plans=$out/plans.jsonl
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
planned() {  # NAME TARGET: whether plans.jsonl has it
  [ -f "$plans" ] && grep -qF "{\"name\": \"$1\", \"target\": \"$2\"," "$plans"
}
keep() {  # NAME TARGET: the plan in $tmp/plan.json, appended to plans.jsonl as one line
  python -c 'import json, sys
print(json.dumps({"name": sys.argv[1], "target": sys.argv[2],
                  "plan": json.load(open(sys.argv[3]))}))' "$1" "$2" "$tmp/plan.json" >> "$plans"
}
# name | chips (XLA:CPU devices) | topology flags | config and overrides
rows=(
  "sft-v5e8|8|--topology v5e:2x4|--config qwen2_7b_sft_v5e8"
  "dpo-v5e8|8|--topology v5e:2x4|--config qwen2_7b_dpo_v5e8"
  "sft-v5e8-shipped|8|--topology v5e:2x4|--config qwen2_7b_sft"
  "dpo-v5e8-shipped|8|--topology v5e:2x4|--config qwen2_7b_dpo"
  "sft-v5p8|4|--topology v5p:2x2x1|--config qwen2_7b_sft"
  "dpo-v5p8|4|--topology v5p:2x2x1|--config qwen2_7b_dpo"
  "sft-v5p64|32|--topology v5p:4x4x2|--config qwen2_7b_sft --set train.micro_batches=2"
  "dpo-v5p64|32|--topology v5p:4x4x2|--config qwen2_7b_dpo --set train.micro_batches=4"
  "sft-v5p8x2|8|--topology v5p:2x2x1 --topology-slices 2|--config qwen2_7b_sft"
  "sft-v5p8-dots|4|--topology v5p:2x2x1|--config qwen2_7b_sft --set model.remat=dots"
  "sft-v6e8|8|--topology v6e:2x4|--config qwen2_7b_sft"
  # the shipped config with pure fsdp on 16 to 64 v5e chips (issue 15's table)
  "sft-v5e16|16|--topology v5e:4x4 --no-estimate|--config qwen2_7b_sft --set train.micro_batches=4"
  "sft-v5e32|32|--topology v5e:4x8 --no-estimate|--config qwen2_7b_sft --set train.micro_batches=2"
  "sft-v5e64|64|--topology v5e:8x8 --no-estimate|--config qwen2_7b_sft --set train.micro_batches=1"
  # what each memory lever of the v5e-8 configs takes off (no estimate)
  "lever-sft-xla-full|8|--topology v5e:2x4 --no-estimate|--config qwen2_7b_sft_v5e8 --set model.attention=xla --set model.remat=full"
  "lever-sft-splash-full|8|--topology v5e:2x4 --no-estimate|--config qwen2_7b_sft_v5e8 --set model.remat=full"
  "lever-sft-xla-full-f32moments|8|--topology v5e:2x4 --no-estimate|--config qwen2_7b_sft_v5e8 --set model.attention=xla --set model.remat=full --set train.moments_dtype=float32"
  "lever-dpo-splash-full|8|--topology v5e:2x4 --no-estimate|--config qwen2_7b_dpo_v5e8 --set model.remat=full"
  # the plans issue 15 called fitting a v5e chip (XLA:CPU), by the TPU compiler
  "claim-adafactor-f4t2|8|--topology v5e:2x4 --no-estimate|--config qwen2_7b_sft --mesh fsdp=4,tensor=2 --set train.optimizer=adafactor --set train.accumulate_dtype=bfloat16 --set train.micro_batches=16 --set model.attention=xla"
  "claim-adafactor-f2t4|8|--topology v5e:2x4 --no-estimate|--config qwen2_7b_sft --mesh fsdp=2,tensor=4 --set train.optimizer=adafactor --set train.accumulate_dtype=bfloat16 --set train.micro_batches=16 --set model.attention=xla"
)
for row in "${rows[@]}"; do
  IFS='|' read -r name chips topo config <<< "$row"
  : > "$tmp/log"
  if ! planned "$name" tpu; then
    # shellcheck disable=SC2086
    if ! python scripts/train.py $config --dry-run $topo --no-progress \
        > "$tmp/plan.json" 2>> "$tmp/log"; then
      # a plan the compiler refuses: its one-line error is the result
      python -c 'import json, sys; print(json.dumps({"error": sys.argv[1]}))' \
        "$(grep '^error:' "$tmp/log")" > "$tmp/plan.json"
    fi
    keep "$name" tpu
  fi
  if ! planned "$name" cpu; then
    # shellcheck disable=SC2086
    python scripts/train.py $config --dry-run --simulate-devices "$chips" --no-progress \
      > "$tmp/plan.json" 2>> "$tmp/log" && keep "$name" cpu
  fi
  if [ -s "$tmp/log" ]; then { echo "== $name =="; cat "$tmp/log"; } >> "$out/plans.log"; fi
done
