#!/bin/bash
# Marco-o1's loop as one pipeline: search -> verified chains and pairs -> SFT -> DPO
# -> MGSM evaluation. Every stage resumes where it stopped and is skipped when its
# output exists, so rerunning the script after any interruption continues it.
#
#   bash scripts/self_improve.sh MODEL_DIR DATA_DIR WORK_DIR
#
# DATA_DIR holds gsm8k/train.jsonl and mgsm/mgsm_{en,zh}.tsv; WORK_DIR receives
# everything. Sizes and settings come from the environment (defaults in brackets):
#   PROBLEMS [100] GSM8K train problems searched; SEARCH [v2-gsm8k] search config;
#   SEARCH_SET ["search.token_budget=1024 search.call_tokens=256 search.max_tokens=1024"];
#   SELECT [shortest] SFT chains per tree; SAMPLING [0] 1: add the verified chains and
#   pairs of 8 chat-template samples per problem (the sc config, 512 tokens each);
#   PAIRS_PER_TREE [1] preference pairs kept per tree (balanced problems, a short reference pass);
#   SFT_STEPS [42], SFT_BATCH [2], SEQ_LEN [1024] (about one epoch of the SAMPLING=1 data);
#   SFT_SET, DPO_SET extra "--set" items; RESEARCH [0] 1: search again with the SFT
#   model for the DPO pairs; CUT_PAIRS [3] pairs per problem whose rejected side is
#   one of the SFT model's greedy chains (Marco-o1 prompt, the evaluation's 384
#   tokens) that ran out of budget, added to the DPO pairs (0: none);
#   DPO_STEPS [28], DPO_BATCH [2];
#   EVAL_LIMIT [40], EVAL_METHODS ["cot-marco cot-chat mcts-step"], SLOTS [64].
# The evaluation runs method by method, language by language, each for the base, SFT
# and DPO models, so the most telling rows (greedy CoT) come first.
set -euo pipefail
model=${1:?model directory}; data=${2:?data directory}; work=${3:?work directory}
problems=${PROBLEMS:-100}; search=${SEARCH:-v2-gsm8k}; select=${SELECT:-shortest}
read -r -a search_set <<< \
  "${SEARCH_SET:-search.token_budget=1024 search.call_tokens=256 search.max_tokens=1024}"
seq_len=${SEQ_LEN:-1024}; slots=${SLOTS:-64}
mkdir -p "$work"
sets() { for item in "$@"; do printf -- '--set\0%s\0' "$item"; done; }
stage() { echo "== $(date +%H:%M:%S) $*" >&2; }

synthesize() {  # MODEL NAME CONFIG [SET...]: search GSM8K train into WORK/NAME.jsonl + trees
  local model=$1 name=$2 config=$3; shift 3
  stage "synthesize $name ($problems problems, $config)"
  mapfile -d '' extra < <(sets "$@")
  python scripts/search.py --model "$model" --config "$config" --input "$data/gsm8k/train.jsonl" \
    --limit "$problems" --slots "$slots" --output "$work/$name.jsonl" \
    --trees "$work/trees-$name.jsonl" "${extra[@]}"
}

search_data() {  # MODEL NAME: the trees (and samples) of MODEL, exported to WORK/NAME-{sft,pairs}
  synthesize "$1" "$2" "$search" "${search_set[@]}"
  export_data "$2" "$1" "$select"
  if [ "${SAMPLING:-0}" = 1 ]; then
    synthesize "$1" "$2-sc" sc template=chat search.max_tokens=512 search.call_tokens=512
    export_data "$2-sc" "$1" all
    cat "$work/$2-sft.jsonl" "$work/$2-sc-sft.jsonl" > "$work/$2-mix-sft.jsonl"
    cat "$work/$2-pairs.jsonl" "$work/$2-sc-pairs.jsonl" > "$work/$2-mix-pairs.jsonl"
  fi
}

export_data() {  # NAME MODEL SELECT: SFT records and pairs of WORK/trees-NAME.jsonl
  if [ -s "$work/$1-sft.jsonl" ] && [ -s "$work/$1-pairs.jsonl" ]; then
    stage "export $1: done"; return; fi
  stage "export $1"
  python scripts/export_data.py --trees "$work/trees-$1.jsonl" --model "$2" --select "$3" \
    --sft "$work/$1-sft.jsonl" --pairs "$work/$1-pairs.jsonl" \
    --max-pairs-per-tree "${PAIRS_PER_TREE:-1}" \
    --exclude "$data/mgsm/mgsm_en.tsv" --exclude "$data/mgsm/mgsm_zh.tsv"
}

cut_pairs() {  # MODEL: pairs of a correct chain of the base searches against MODEL's
  # greedy chains that ran out of the evaluation's budget, so that DPO learns to end
  local out=$work/sft-cut-pairs.jsonl trees=(--trees "$work/trees-base.jsonl")
  if [ -s "$out" ]; then stage "pairs against unfinished chains: done"; return; fi
  synthesize "$1" sft-cot cot search.max_tokens=384 search.call_tokens=384
  [ "${SAMPLING:-0}" = 1 ] && trees+=(--trees "$work/trees-base-sc.jsonl")
  stage "export pairs against unfinished chains"
  python scripts/export_data.py "${trees[@]}" --trees "$work/trees-sft-cot.jsonl" --model "$1" \
    --rejected unfinished --pairs "$out" --max-pairs-per-tree "${CUT_PAIRS:-3}" \
    --exclude "$data/mgsm/mgsm_en.tsv" --exclude "$data/mgsm/mgsm_zh.tsv"
}

train() {  # CONFIG OUT INIT DATA STEPS BATCH [SET...]: a resumable run into WORK/OUT/final
  local config=$1 name=$2 out=$work/$2 init=$3 path=$4 steps=$5 batch=$6; shift 6
  if [ -d "$out/final" ]; then stage "$name: done"; return; fi
  stage "$name ($config, $steps steps of $batch)"
  local resume=()
  [ -d "$out/checkpoints" ] && [ -n "$(ls -A "$out/checkpoints")" ] && resume=(--resume)
  mapfile -d '' extra < <(sets "model.init_from=$init" "data.path=$path" "output_dir=$out" \
    "train.steps=$steps" "train.global_batch=$batch" "data.seq_len=$seq_len" "$@")
  python scripts/train.py --config "$config" "${extra[@]}" "${resume[@]}" --no-progress
}

evaluate() {  # METHOD LANG MODEL NAME: the first EVAL_LIMIT MGSM problems, with the settings
  # of BENCHMARKS.md's MGSM table (384 tokens a path; MCTS: 2 iterations, chat template)
  local method=$1 lang=$2 model=$3 name=$4 args
  local summary=$work/eval/summary-$lang-$method-$name.json
  if [ -s "$summary" ]; then stage "evaluate $name $lang $method: done"; return; fi
  stage "evaluate $name $lang $method"
  case $method in
    cot-marco) args=(--method cot --template marco --tag "$name-marco384");;
    cot-chat) args=(--method cot --template chat --tag "$name-chat384");;
    *) args=(--method "$method" --iterations 2 --template chat --tag "$name-chat384");;
  esac
  python scripts/eval_mgsm.py --model "$model" --data "$data/mgsm/mgsm_$lang.tsv" \
    --limit "${EVAL_LIMIT:-40}" --out-dir "$work/eval" --slots "$slots" --max-tokens 384 \
    "${args[@]}" > "$summary.partial"
  mv "$summary.partial" "$summary"
}

read -r -a sft_set <<< "${SFT_SET:-}"
read -r -a dpo_set <<< "${DPO_SET:-}"
mkdir -p "$work/eval"
mix=; [ "${SAMPLING:-0}" = 1 ] && mix=-mix
search_data "$model" base
# Sized for a 2-CPU host (BENCHMARKS.md): float32 compute, a short warmup and a higher
# learning rate than the configs' because the run is about one epoch of ~200 chains.
train qwen2_05b_sft sft "$model" "$work/base$mix-sft.jsonl" "${SFT_STEPS:-42}" "${SFT_BATCH:-2}" \
  model.compute_dtype=float32 train.learning_rate=2e-5 train.warmup_steps=4 \
  train.min_learning_rate=2e-6 checkpoint.every=21 checkpoint.keep=1 ${sft_set[@]+"${sft_set[@]}"}
pairs=$work/base$mix-pairs.jsonl
if [ "${RESEARCH:-0}" = 1 ]; then
  search_data "$work/sft/final" sft
  pairs=$work/sft$mix-pairs.jsonl
fi
if [ "${CUT_PAIRS:-3}" != 0 ]; then
  cut_pairs "$work/sft/final"
  cat "$pairs" "$work/sft-cut-pairs.jsonl" > "$work/dpo-pairs.jsonl"
  pairs=$work/dpo-pairs.jsonl
fi
# Pairs whose longer row exceeds 769 tokens are dropped (rows are padded to data.seq_len):
# 768 holds the longest prompt and a sampled chain cut off at 512 tokens.
train qwen2_05b_dpo dpo "$work/sft/final" "$pairs" "${DPO_STEPS:-28}" "${DPO_BATCH:-2}" \
  model.compute_dtype=float32 data.seq_len=768 data.overlong=drop train.learning_rate=2e-6 \
  train.warmup_steps=2 train.min_learning_rate=2e-7 checkpoint.every=12 checkpoint.keep=1 \
  ${dpo_set[@]+"${dpo_set[@]}"}
for method in ${EVAL_METHODS:-cot-marco cot-chat mcts-step}; do
  for lang in en zh; do
    evaluate "$method" "$lang" "$model" base
    evaluate "$method" "$lang" "$work/sft/final" sft
    evaluate "$method" "$lang" "$work/dpo/final" dpo
  done
done
stage "done: per-problem files and summaries in $work/eval"
