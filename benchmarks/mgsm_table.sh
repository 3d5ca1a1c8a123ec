#!/bin/bash
# The MGSM table of BENCHMARKS.md: every method on the first 40 problems of
# MGSM-En and MGSM-Zh, chat template, 384 generated tokens per path, MCTS with
# 2 iterations of 4 children. Each run appends to its per-problem file in
# benchmarks/results/mgsm/ (committed, so a table survives the machine) and resumes
# where it stopped; a finished run only re-prints its summary (summary-*.json,
# written only when the run completes).
#   bash benchmarks/mgsm_table.sh MODEL_DIR MGSM_DIR [RUN ...]
# RUN is <method>-<lang> (e.g. mcts-step-en); default: all ten.
set -euo pipefail
model=${1:?model directory}; data=${2:?directory with mgsm_en.tsv and mgsm_zh.tsv}
shift 2
out=benchmarks/results/mgsm
runs=("$@")
if [ ${#runs[@]} -eq 0 ]; then
  for method in cot mcts-mini64 sc mcts-step mcts-mini32; do runs+=("$method-en" "$method-zh"); done
fi
for run in "${runs[@]}"; do
  method=${run%-*}; lang=${run##*-}
  iterations=(); case $method in mcts-*) iterations=(--iterations 2);; esac
  python scripts/eval_mgsm.py --model "$model" --data "$data/mgsm_$lang.tsv" --method "$method" \
    --limit 40 --slots 64 "${iterations[@]}" --max-tokens 384 --template chat \
    --tag chat384 --out-dir $out > "$out/summary-$lang-$method.json.partial"
  mv "$out/summary-$lang-$method.json.partial" "$out/summary-$lang-$method.json"
done
