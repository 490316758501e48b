"""Evaluate a checkpoint on your own task, as trained with --dataset_name custom:
`python eval_custom.py --model_path CKPT --data ROWS.jsonl --verifier SPEC`."""

import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from caopd.evaluation import evaluate

if __name__ == "__main__":
    sys.exit(evaluate("custom"))
