"""Metrics for science (chemistry MCQ) inference files; adds ``answer_parse_rate``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from caopd.metric_script import run_metric_script
from caopd.verifiers import extract_choice, verify_mcq


def answer_parse_rate(items: list[dict]) -> dict:
    parsed = [isinstance(item.get("response"), str) and extract_choice(item["response"]) is not None for item in items]
    return {"answer_parse_rate": sum(parsed) / len(parsed) if parsed else 0.0}


if __name__ == "__main__":
    sys.exit(
        run_metric_script("Calibration metrics for multiple-choice science responses.", verify_mcq, answer_parse_rate)
    )
