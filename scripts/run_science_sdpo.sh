#!/usr/bin/env bash
# CaOPD on the SDPO backbone for the science task (SciKnowEval chemistry MCQ) with the paper's settings for Qwen3-8B (Table 6): TRL's
# SDPOTrainer, the verifier as reward, a successful rollout shown to the teacher, P_acc written into the student
# completion, that rollout and the teacher note. See scripts/paper_run.sh for the settings and the environment
# variables that override them (DISTILLATION_WEIGHT adds SDPO's policy-gradient term).
# Usage: [NUM_GPUS=4] [OUTPUT_DIR=...] bash scripts/run_science_sdpo.sh [extra main.py flags...]
set -euo pipefail
TASK=science BACKBONE=sdpo exec bash "$(dirname "$0")/paper_run.sh" "$@"
