#!/usr/bin/env bash
# CaOPD on the science task (SciKnowEval chemistry MCQ) with the paper's settings for Qwen3-8B: see scripts/paper_run.sh
# for the settings and the environment variables that override them.
# Usage: [NUM_GPUS=4] [OUTPUT_DIR=...] bash scripts/run_science.sh [extra main.py flags...]
set -euo pipefail
TASK=science exec bash "$(dirname "$0")/paper_run.sh" "$@"
