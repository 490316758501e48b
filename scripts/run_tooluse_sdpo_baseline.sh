#!/usr/bin/env bash
# Plain SDPO for the tool-use task (ToolAlpaca): exactly scripts/run_tooluse_sdpo.sh without CaOPD's empirical-confidence
# targets (--no_empirical_calibration), so every variable documented in scripts/paper_run.sh works here too.
# Usage: bash scripts/run_tooluse_sdpo_baseline.sh [extra main.py flags...]
set -euo pipefail
cd "$(dirname "$0")/.."

export OUTPUT_DIR="${OUTPUT_DIR:-outputs/tooluse_sdpo_qwen3_8b}"

exec bash scripts/run_tooluse_sdpo.sh --no_empirical_calibration "$@"
