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
#   MODEL, OUTPUT_DIR, CONFIG, ACCELERATE_CONFIG, LEARNING_RATE, ...: as in scripts/paper_run.sh
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

export TASK OUTPUT_DIR="${OUTPUT_DIR:-outputs/${TASK}_caopd_qwen3_8b_multinode}"

if [[ -z "$NODE_RANK" || -z "$MASTER_ADDR" ]]; then
  echo "error: set NODE_RANK (0..$((NUM_NODES - 1))) and MASTER_ADDR (the rank-0 node) for every node" >&2
  exit 1
fi
LAUNCH_ARGS="--num_machines $NUM_NODES --machine_rank $NODE_RANK --main_process_ip $MASTER_ADDR"
LAUNCH_ARGS+=" --main_process_port $MASTER_PORT"
echo "[run_multinode] node $NODE_RANK/$NUM_NODES"
NUM_GPUS=$((NUM_NODES * GPUS_PER_NODE)) ACCELERATE_CONFIG="$ACCELERATE_CONFIG" LAUNCH_ARGS="$LAUNCH_ARGS" \
  exec bash scripts/paper_run.sh "$@"
