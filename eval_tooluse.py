"""Evaluate a checkpoint on the tooluse task: `python eval_tooluse.py --model_path CKPT [--data PATH]`."""

import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from caopd.evaluation import evaluate

if __name__ == "__main__":
    sys.exit(evaluate("tooluse"))
