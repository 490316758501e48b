#!/usr/bin/env bash
# CaOPD on the tool-use task (ToolAlpaca) with the paper's settings for Qwen3-8B: see scripts/paper_run.sh
# for the settings and the environment variables that override them.
# Usage: [NUM_GPUS=4] [OUTPUT_DIR=...] bash scripts/run_tooluse.sh [extra main.py flags...]
set -euo pipefail
TASK=tooluse exec bash "$(dirname "$0")/paper_run.sh" "$@"
