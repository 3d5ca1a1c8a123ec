#!/bin/bash
# The MGSM table of BENCHMARKS.md: every method on the first 40 problems of
# MGSM-En and MGSM-Zh, chat template, 384 generated tokens per path, MCTS with
# 2 iterations of 4 children. Each run appends to its per-problem file in
# results/eval/ and resumes where it stopped; summaries go to results/eval/summary-*.json.
#   bash benchmarks/mgsm_table.sh MODEL_DIR MGSM_DIR
set -euo pipefail
model=${1:?model directory}; data=${2:?directory with mgsm_en.tsv and mgsm_zh.tsv}
mkdir -p results/eval
for method in cot mcts-mini64 sc mcts-step mcts-mini32; do
  for lang in en zh; do
    case $method in cot) batch=40;; sc) batch=8;; *) batch=16;; esac
    iterations=(); case $method in mcts-*) iterations=(--iterations 2);; esac
    python scripts/eval_mgsm.py --model "$model" --data "$data/mgsm_$lang.tsv" --method $method \
      --limit 40 --problems-per-batch $batch "${iterations[@]}" --max-tokens 384 --template chat \
      --tag chat384 > "results/eval/summary-$lang-$method.json"
  done
done
