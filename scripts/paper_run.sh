#!/usr/bin/env bash
# CaOPD with the paper's settings for Qwen3-8B (Table 6), for TASK=tooluse or TASK=science, on BACKBONE=sdft
# (default; the teacher sees the golden demonstration) or BACKBONE=sdpo (TRL's SDPO: the teacher sees a
# successful rollout, the verifier is the reward, rollout importance-sampling clip 2):
# K = 8 rollouts per question at temperature 1.0, 32 questions per optimizer step, reverse KL
# (distillation_alpha 1.0) on the student's top-100 tokens, EMA teacher (rate 0.01 through
# --ref_model_mixup_alpha, as in the original scripts), AdamW lr 2e-5 (tool use) / 1e-5 (science),
# 10 warmup steps, weight decay 0.01, grad clip 1.0, max prompt 2048 / max response 8192 tokens.
# Full fine-tuning under DeepSpeed ZeRO-3 (scripts/accelerate/zero3.yaml, needs `pip install deepspeed`).
# Called by run_tooluse.sh, run_science.sh and run_multinode.sh; usable directly:
#   TASK=science NUM_GPUS=4 OUTPUT_DIR=outputs/my_run bash scripts/paper_run.sh --max_steps 100
#   CONFIG=run.yaml TASK=tooluse bash scripts/paper_run.sh   # hyperparameters from the YAML instead
#
# Every variable below can be set from the environment. Extra arguments are passed to main.py last,
# so they win over the values set here. When CONFIG is set, only --config, --output_dir and the extra
# arguments are passed: the YAML supplies everything else. The training data comes from
# data/prepare_<task>.py (default path data/<task>/train); point TRAIN_DATA elsewhere to use another copy.
# LAUNCH_ARGS: extra `accelerate launch` arguments (python -m caopd.launch takes the same; run_multinode.sh passes
# the node rank and address).
# DRY_RUN=1 prints the command (shell-quoted) and exits without launching it.
set -euo pipefail
cd "$(dirname "$0")/.."

TASK="${TASK:-tooluse}"
BACKBONE="${BACKBONE:-sdft}"
case "$BACKBONE" in
  sdft | sdpo) ;;
  *) echo "error: BACKBONE must be sdft or sdpo, got '$BACKBONE'" >&2; exit 1 ;;
esac
case "$TASK" in
  tooluse) DEFAULT_LR=2e-5 ;;
  science) DEFAULT_LR=1e-5 ;;
  *) echo "error: TASK must be tooluse or science, got '$TASK'" >&2; exit 1 ;;
esac
MODEL="${MODEL:-Qwen/Qwen3-8B}"
TRAIN_DATA="${TRAIN_DATA:-data/$TASK/train}"
OUTPUT_DIR="${OUTPUT_DIR:-outputs/${TASK}_caopd_${BACKBONE}_qwen3_8b}"
LAUNCH_ARGS="${LAUNCH_ARGS:-}"
CONFIG="${CONFIG:-}"
ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-scripts/accelerate/zero3.yaml}"
NUM_GPUS="${NUM_GPUS:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)}"

LEARNING_RATE="${LEARNING_RATE:-$DEFAULT_LR}"
NUM_TRAIN_EPOCHS="${NUM_TRAIN_EPOCHS:-1}"
NUM_PROMPTS_PER_BATCH="${NUM_PROMPTS_PER_BATCH:-32}"   # questions per optimizer step
NUM_GENERATIONS="${NUM_GENERATIONS:-8}"               # K rollouts per question
PER_DEVICE_TRAIN_BATCH_SIZE="${PER_DEVICE_TRAIN_BATCH_SIZE:-8}"
TEMPERATURE="${TEMPERATURE:-1.0}"
DISTILLATION_ALPHA="${DISTILLATION_ALPHA:-1.0}"       # 1.0 = reverse KL
DISTILLATION_TOPK="${DISTILLATION_TOPK:-100}"
REF_MODEL_MIXUP_ALPHA="${REF_MODEL_MIXUP_ALPHA:-0.01}" # EMA teacher update rate
TEACHER_CONTEXT_MODE="${TEACHER_CONTEXT_MODE:-demo}"  # sdft: demo | correct_solution
DISTILLATION_WEIGHT="${DISTILLATION_WEIGHT:-1.0}"     # sdpo: 1.0 = distillation only, < 1 adds the policy gradient
MAX_PROMPT_LENGTH="${MAX_PROMPT_LENGTH:-2048}"
MAX_COMPLETION_LENGTH="${MAX_COMPLETION_LENGTH:-8192}"
WARMUP_STEPS="${WARMUP_STEPS:-10}"
WEIGHT_DECAY="${WEIGHT_DECAY:-0.01}"
MAX_GRAD_NORM="${MAX_GRAD_NORM:-1.0}"
SAVE_STEPS="${SAVE_STEPS:-50}"
SEED="${SEED:-42}"
REPORT_TO="${REPORT_TO:-wandb}"                       # wandb | none

if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi

DRY_RUN="${DRY_RUN:-0}"
if [[ "$NUM_GPUS" -lt 1 ]]; then
  echo "error: no GPU found (nvidia-smi). Set NUM_GPUS, or try scripts/run_cpu_demo.sh on a CPU machine." >&2
  exit 1
fi
if grep -q '^distributed_type: *DEEPSPEED' "$ACCELERATE_CONFIG" && ! python -c 'import deepspeed' >/dev/null 2>&1; then
  echo "error: $ACCELERATE_CONFIG uses DeepSpeed, which is not installed (pip install deepspeed)," >&2
  echo "       or run with ACCELERATE_CONFIG=scripts/accelerate/fsdp.yaml" >&2
  exit 1
fi

if [[ -n "$CONFIG" ]]; then
  ARGS=(--config "$CONFIG")
else
  ARGS=(
    --backbone "$BACKBONE"
    --model_name "$MODEL"
    --dataset_name "$TASK"
    --train_data "$TRAIN_DATA"
    --learning_rate "$LEARNING_RATE"
    --num_train_epochs "$NUM_TRAIN_EPOCHS"
    --num_prompts_per_batch "$NUM_PROMPTS_PER_BATCH"
    --num_generations "$NUM_GENERATIONS"
    --per_device_train_batch_size "$PER_DEVICE_TRAIN_BATCH_SIZE"
    --temperature "$TEMPERATURE"
    --distillation_alpha "$DISTILLATION_ALPHA"
    --distillation_topk "$DISTILLATION_TOPK"
    --ref_model_mixup_alpha "$REF_MODEL_MIXUP_ALPHA"
    --max_prompt_length "$MAX_PROMPT_LENGTH"
    --max_completion_length "$MAX_COMPLETION_LENGTH"
    --warmup_steps "$WARMUP_STEPS"
    --weight_decay "$WEIGHT_DECAY"
    --max_grad_norm "$MAX_GRAD_NORM"
    --save_steps "$SAVE_STEPS"
    --seed "$SEED"
    --gradient_checkpointing
    --report_to "$REPORT_TO"
  )
  if [[ "$BACKBONE" == sdft ]]; then
    ARGS+=(--teacher_context_mode "$TEACHER_CONTEXT_MODE")
  else  # Table 6: top-k distillation on both backbones (TRL's SDPO default is sampled-token), IS clip 2 (TRL's)
    ARGS+=(--distillation_mode topk_logits --distillation_weight "$DISTILLATION_WEIGHT")
  fi
fi

# shellcheck disable=SC2206  # LAUNCH_ARGS is a list of words on purpose
CMD=(python -m caopd.launch --config_file "$ACCELERATE_CONFIG" --num_processes "$NUM_GPUS" $LAUNCH_ARGS
  main.py "${ARGS[@]}" --output_dir "$OUTPUT_DIR" "$@")
echo "[paper_run] $(printf '%q ' "${CMD[@]}")"
if [[ "$DRY_RUN" == 1 ]]; then
  exit 0
fi
"${CMD[@]}"
