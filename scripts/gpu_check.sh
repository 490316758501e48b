#!/usr/bin/env bash
# Run after installing on a GPU machine (bash scripts/setup.sh): does CaOPD train here?
# One GPU, a tiny Qwen3 built from a config with the embedded model's tokenizer (no download), bf16:
# two CaOPD steps with transformers generation and checkpoints with the EMA teacher, a resume from `latest`,
# then one step with vLLM colocate (if vLLM is installed) and one under DeepSpeed ZeRO-3 (if DeepSpeed is); the
# shared-prefix forward and the chunked loss against their plain forms (loss and gradients, fp32).
# Prints PASS / FAIL / SKIP per check and exits 1 if any failed; logs stay in WORK_DIR (default: a temp folder).
# Usage: bash scripts/gpu_check.sh            (about 2 minutes, most of it starting processes and vLLM)
#        GPU_CHECK_CPU=1 bash scripts/gpu_check.sh   (the same checks on the CPU where they can run: tests)
set -euo pipefail
cd "$(dirname "$0")/.."

ARGS=()
if [[ "${GPU_CHECK_CPU:-0}" == 1 ]]; then
  ARGS+=(--cpu)
elif ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "error: no NVIDIA GPU found (nvidia-smi); run this on the GPU machine" >&2
  exit 2
fi
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
[[ -n "${WORK_DIR:-}" ]] && ARGS+=(--work_dir "$WORK_DIR")
exec python scripts/gpu_check.py ${ARGS[@]+"${ARGS[@]}"}
