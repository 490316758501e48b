#!/usr/bin/env bash
# SDFT baseline for the science task: plain on-policy self-distillation, without
# CaOPD's empirical-confidence targets (--no_empirical_calibration). Everything
# else (model, data, K, batch, lr, KL, EMA teacher, lengths, accelerate config)
# is exactly scripts/run_science.sh, which this script runs; so every variable
# documented there (MODEL, NUM_GPUS, CONFIG, ACCELERATE_CONFIG, ...) works here too.
#
# Usage:
#   bash scripts/run_science_sdft.sh [extra main.py flags...]
set -euo pipefail
cd "$(dirname "$0")/.."

export OUTPUT_DIR="${OUTPUT_DIR:-outputs/science_sdft_qwen3_8b}"

exec bash scripts/run_science.sh --no_empirical_calibration "$@"
