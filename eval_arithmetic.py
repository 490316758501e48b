"""Evaluate a checkpoint on held-out arithmetic questions: `python eval_arithmetic.py --model_path CKPT`."""

import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from caopd.evaluation import evaluate

if __name__ == "__main__":
    sys.exit(evaluate("arithmetic"))
