"""Metrics for tool-use inference files: ``python eval/run_eval_tooluse.py --input INF.json --output M.json``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from caopd.metric_script import run_metric_script
from caopd.verifiers import tooluse_golden_problem, verify_tooluse

if __name__ == "__main__":
    description = "Calibration metrics for tool-use responses (ToolAlpaca golden calls)."
    sys.exit(run_metric_script(description, verify_tooluse, check_golden=tooluse_golden_problem, tooluse_rule=True))
