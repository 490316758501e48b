#!/usr/bin/env bash
# Proves that the GPU dependency set (requirements-gpu.txt: the CPU pins plus trl[vllm], vLLM and DeepSpeed)
# still resolves, with pip's resolver in dry-run mode: nothing is installed, nothing needs a GPU. CI runs it
# (scripts/run_tests.sh), so a pin bump that breaks the GPU set fails here, not on a GPU node.
# Prints the resolved versions of the packages that matter; exits non-zero when pip cannot resolve the set.
# Usage: bash scripts/check_gpu_requirements.sh   (after scripts/setup.sh; about 2-3 minutes, mostly downloads)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
report="$(mktemp)"
trap 'rm -f "$report"' EXIT

echo "[gpu-requirements] resolving requirements-gpu.txt (pip install --dry-run --ignore-installed)"
if ! "$PYTHON" -m pip install --dry-run --ignore-installed --quiet --report "$report" -r requirements-gpu.txt \
  2> >(grep -v "^WARNING: Location" >&2); then
  echo "error: requirements-gpu.txt does not resolve (pip's messages above); keep every pin inside the ranges" >&2
  echo "       that vllm and trl[vllm] declare" >&2
  exit 1
fi
"$PYTHON" - "$report" <<'PY'
import json
import sys

wanted = ("torch", "transformers", "trl", "vllm", "deepspeed", "accelerate", "peft", "datasets", "numpy")
resolved = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in json.load(open(sys.argv[1]))["install"]}
missing = [name for name in wanted if name not in resolved]
if missing:
    sys.exit(f"error: the resolved GPU set lacks {', '.join(missing)}")
print("[gpu-requirements] resolves: " + ", ".join(f"{name} {resolved[name]}" for name in wanted))
PY
