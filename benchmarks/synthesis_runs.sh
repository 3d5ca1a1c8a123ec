#!/bin/bash
# Marco-o1 v2's data engine on the demo checkpoint (issue 14): tagged tree
# search with dynamic reflection vs plain sampling, verified against the gold
# answers, and v2's own letter-counting demo. Every run appends to its
# per-problem file and its trees (trees-RUN.jsonl) in benchmarks/results/synth/
# (committed) and resumes where it stopped;
# 32 trees in flight bounds what a killed run loses.
#   bash benchmarks/synthesis_runs.sh MODEL_DIR DATA_DIR [RUN ...]
# RUN: gsm8k-v2 (first 100 GSM8K train problems), gsm8k-step (the same, v2's verified
#      tree over chat-template CoT steps, reflections that continue the wrong chain;
#      gsm8k-restart: the config's own reflections, which start over),
#      gsm8k-sc (the same, 8 samples),
#      letters-v2 (first 50 letter-count problems); default: all five.
# Budget per problem: a tree starts no rollout after 1024 generated tokens, a
# node writes at most 256 tokens, a path at most 1024 (gsm8k-step: a step at most 256,
# a step and its rollout 512, as a sample); sampling draws 8 chains of
# at most 512 tokens and is compared at the tree's own token count
# (benchmarks/synthesis_vs_sampling.py).
set -euo pipefail
model=${1:?model directory}; data=${2:?directory with gsm8k/ and marco/}
shift 2
out=benchmarks/results/synth
runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=(gsm8k-v2 gsm8k-step gsm8k-restart gsm8k-sc letters-v2)
budget=(--set search.token_budget=1024 --set search.call_tokens=256 --set search.max_tokens=1024)
continue_text="Wait! Something is wrong: that answer is not right. Let me think again."
for run in "${runs[@]}"; do
  case $run in
    gsm8k-v2) args=(--config v2-gsm8k --input "$data/gsm8k/train.jsonl" --limit 100 "${budget[@]}");;
    gsm8k-step) args=(--config v2-gsm8k-step --input "$data/gsm8k/train.jsonl" --limit 100
                      --set search.token_budget=1024 --set search.reflect_wrong=continue
                      --set "search.reflection_text=$continue_text");;
    gsm8k-restart) args=(--config v2-gsm8k-step --input "$data/gsm8k/train.jsonl" --limit 100
                         --set search.token_budget=1024);;
    gsm8k-sc) args=(--config sc --input "$data/gsm8k/train.jsonl" --limit 100 --set template=chat
                    --set search.max_tokens=512 --set search.call_tokens=512);;
    letters-v2) args=(--config v2-letters --input "$data/marco/letter_count_hard.json" --limit 50
                      "${budget[@]}");;
    *) echo "unknown run $run" >&2; exit 2;;
  esac
  python scripts/search.py --model "$model" "${args[@]}" --slots 64 --max-model-len 2048 --trees-in-flight 32 \
    --output "$out/$run.jsonl" --trees "$out/trees-$run.jsonl" 2>> "$out/$run.log" | tee -a "$out/$run.summary"
done
