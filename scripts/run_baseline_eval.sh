#!/usr/bin/env bash
# The README's baseline: the embedded SmolLM2-135M-Instruct, untrained, on the shared evaluation sets
# (all 97 tool-use questions; the first 100 of the 507 science questions), one sample per question at the
# paper's validation setting (temperature 0.6, top-p 0.95), on CPU. Writes OUT_DIR/{tooluse,science}/, the
# side-by-side table OUT_DIR/baseline.md, and the overlaid reliability diagram docs/baseline_reliability.png.
# Usage: bash scripts/run_baseline_eval.sh        (about 20 minutes on 2 CPU cores)
# Environment (all optional): MODEL (smollm2), SHARED (../shared/data/caopd_eval), OUT_DIR (outputs/baseline),
# TOOLUSE_LIMIT (all 97), SCIENCE_LIMIT (100), TOOLUSE_TOKENS (128), SCIENCE_TOKENS (256),
# RELIABILITY_PNG (docs/baseline_reliability.png: where the overlaid diagram is copied).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="${MODEL:-smollm2}"
SHARED="${SHARED:-../shared/data/caopd_eval}"
OUT_DIR="${OUT_DIR:-outputs/baseline}"
TOOLUSE_LIMIT="${TOOLUSE_LIMIT:-}"
SCIENCE_LIMIT="${SCIENCE_LIMIT:-100}"
TOOLUSE_TOKENS="${TOOLUSE_TOKENS:-128}"
SCIENCE_TOKENS="${SCIENCE_TOKENS:-256}"
RELIABILITY_PNG="${RELIABILITY_PNG:-docs/baseline_reliability.png}"

if [[ ! -d "$SHARED" ]]; then
  echo "error: $SHARED not found: set SHARED to the folder holding tooluse_eval/ and science_eval/" >&2
  exit 1
fi
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

LIMIT=()
[[ -n "$TOOLUSE_LIMIT" ]] && LIMIT=(--limit "$TOOLUSE_LIMIT")
python eval_tooluse.py --model_path "$MODEL" --data "$SHARED/tooluse_eval" ${LIMIT[@]+"${LIMIT[@]}"} --num_samples 1 \
  --max_new_tokens "$TOOLUSE_TOKENS" --batch_size 8 --overwrite --output_dir "$OUT_DIR/tooluse"
python eval_science.py --model_path "$MODEL" --data "$SHARED/science_eval" --limit "$SCIENCE_LIMIT" \
  --num_samples 1 --max_new_tokens "$SCIENCE_TOKENS" --batch_size 10 --overwrite --output_dir "$OUT_DIR/science"
python eval/compare.py "$OUT_DIR/tooluse/metrics.json" "$OUT_DIR/science/metrics.json" --labels tooluse science \
  --output_md "$OUT_DIR/baseline.md" --output_png "$OUT_DIR/baseline.png"
mkdir -p "$(dirname "$RELIABILITY_PNG")"
cp "$OUT_DIR/baseline.png" "$RELIABILITY_PNG"
