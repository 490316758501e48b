#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh), installs the test tools, lints, proves that the GPU dependency set still
# resolves (scripts/check_gpu_requirements.sh, a pip dry run; SKIP_GPU_RESOLVE=1 skips it), then runs the whole
# test suite offline.
# Usage: bash scripts/run_tests.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
.venv/bin/python -m pip install -q -r requirements-dev.txt
# shellcheck disable=SC1091
source .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false

echo "[tests] ruff"
ruff check .
ruff format --check .

if [[ "${SKIP_GPU_RESOLVE:-0}" != 1 ]]; then
  bash scripts/check_gpu_requirements.sh
fi

echo "[tests] pytest"
status=0
# Two workers (pytest-xdist), each taking whole files so that a file's shared fixtures are built once. Each test's
# processes take one OpenMP thread: two workers on two cores, each with a thread per core, ran about a fifth slower.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m pytest -q -n 2 --dist loadfile "$@" || status=$?
if [[ $status -eq 5 ]]; then
  echo "[tests] pytest collected no tests: failing" >&2
  exit 1
fi
exit $status
