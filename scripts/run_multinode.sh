#!/usr/bin/env bash
# Multi-node CaOPD training (DeepSpeed ZeRO-3, scripts/accelerate/multinode.yaml;
# 2 nodes x 8 GPUs by default). Run this script once on EVERY node, with the same
# settings everywhere except NODE_RANK. It starts one `accelerate launch` per node,
# which starts GPUS_PER_NODE training processes there.
#
# Environment (required unless running under SLURM, see below):
#   NODE_RANK      rank of this node, 0 .. NUM_NODES-1 (SLURM: $SLURM_NODEID)
#   MASTER_ADDR    address of the rank-0 node, reachable from all nodes
# Optional:
#   MASTER_PORT    free TCP port on the rank-0 node (29500)
#   NUM_NODES      number of nodes (2; SLURM: $SLURM_NNODES)
#   GPUS_PER_NODE  GPUs used on each node (8)
#   TASK           tooluse | science (tooluse): picks the dataset and the paper's lr
#   MODEL, OUTPUT_DIR, CONFIG, ACCELERATE_CONFIG, LEARNING_RATE, ...: as in scripts/run_tooluse.sh
# OUTPUT_DIR should be on a file system shared by all nodes (checkpoints are
# written by every rank under ZeRO-3). Extra arguments go to main.py last.
# With K = 8 and 32 questions per step (256 rollouts), NUM_NODES * GPUS_PER_NODE *
# per-device batch must divide 256: 16 GPUs x 8 gives 2 micro-batches per step.
#
# Manual example, two machines:
#   node0$ NODE_RANK=0 MASTER_ADDR=node0 bash scripts/run_multinode.sh
#   node1$ NODE_RANK=1 MASTER_ADDR=node0 bash scripts/run_multinode.sh
#
# SLURM example (sbatch file; one task per node, srun starts this script on each):
#   #!/usr/bin/env bash
#   #SBATCH --job-name=caopd
#   #SBATCH --nodes=2
#   #SBATCH --ntasks-per-node=1
#   #SBATCH --gpus-per-node=8
#   #SBATCH --cpus-per-task=64
#   export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
#   export MASTER_PORT=29500 NUM_NODES=$SLURM_NNODES GPUS_PER_NODE=8 TASK=tooluse
#   srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 \
#        bash -c 'NODE_RANK=$SLURM_NODEID bash scripts/run_multinode.sh'
set -euo pipefail
cd "$(dirname "$0")/.."

NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-}}"
MASTER_ADDR="${MASTER_ADDR:-}"
MASTER_PORT="${MASTER_PORT:-29500}"
NUM_NODES="${NUM_NODES:-${SLURM_NNODES:-2}}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
TASK="${TASK:-tooluse}"
ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-scripts/accelerate/multinode.yaml}"
CONFIG="${CONFIG:-}"

MODEL="${MODEL:-Qwen/Qwen3-8B}"
OUTPUT_DIR="${OUTPUT_DIR:-outputs/${TASK}_caopd_qwen3_8b_multinode}"
case "$TASK" in
  tooluse) DEFAULT_LR=2e-5 ;;
  science) DEFAULT_LR=1e-5 ;;
  *) echo "error: TASK must be tooluse or science, got '$TASK'" >&2; exit 1 ;;
esac
TRAIN_DATA="${TRAIN_DATA:-data/$TASK/train}"
LEARNING_RATE="${LEARNING_RATE:-$DEFAULT_LR}"
NUM_TRAIN_EPOCHS="${NUM_TRAIN_EPOCHS:-1}"
NUM_PROMPTS_PER_BATCH="${NUM_PROMPTS_PER_BATCH:-32}"
NUM_GENERATIONS="${NUM_GENERATIONS:-8}"
PER_DEVICE_TRAIN_BATCH_SIZE="${PER_DEVICE_TRAIN_BATCH_SIZE:-8}"
REF_MODEL_MIXUP_ALPHA="${REF_MODEL_MIXUP_ALPHA:-0.01}"
MAX_PROMPT_LENGTH="${MAX_PROMPT_LENGTH:-2048}"
MAX_COMPLETION_LENGTH="${MAX_COMPLETION_LENGTH:-8192}"
REPORT_TO="${REPORT_TO:-wandb}"

if [[ -z "$NODE_RANK" || -z "$MASTER_ADDR" ]]; then
  echo "error: set NODE_RANK (0..$((NUM_NODES - 1))) and MASTER_ADDR (the rank-0 node) for every node" >&2
  exit 1
fi
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi

if [[ -n "$CONFIG" ]]; then
  ARGS=(--config "$CONFIG")
else
  ARGS=(
    --model_name "$MODEL"
    --dataset_name "$TASK"
    --train_data "$TRAIN_DATA"
    --learning_rate "$LEARNING_RATE"
    --num_train_epochs "$NUM_TRAIN_EPOCHS"
    --num_prompts_per_batch "$NUM_PROMPTS_PER_BATCH"
    --num_generations "$NUM_GENERATIONS"
    --per_device_train_batch_size "$PER_DEVICE_TRAIN_BATCH_SIZE"
    --temperature 1.0
    --distillation_alpha 1.0
    --distillation_topk 100
    --ref_model_mixup_alpha "$REF_MODEL_MIXUP_ALPHA"
    --max_prompt_length "$MAX_PROMPT_LENGTH"
    --max_completion_length "$MAX_COMPLETION_LENGTH"
    --warmup_steps 10
    --weight_decay 0.01
    --max_grad_norm 1.0
    --gradient_checkpointing
    --report_to "$REPORT_TO"
  )
fi

CMD=(accelerate launch --config_file "$ACCELERATE_CONFIG"
  --num_machines "$NUM_NODES"
  --num_processes "$((NUM_NODES * GPUS_PER_NODE))"
  --machine_rank "$NODE_RANK"
  --main_process_ip "$MASTER_ADDR"
  --main_process_port "$MASTER_PORT"
  main.py "${ARGS[@]}" --output_dir "$OUTPUT_DIR" "$@")
echo "[run_multinode] node $NODE_RANK/$NUM_NODES: ${CMD[*]}"
"${CMD[@]}"
