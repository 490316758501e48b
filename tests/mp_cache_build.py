"""One of several processes resolving the embedded model into an empty cache at the same instant, for test_models.py.

    python tests/mp_cache_build.py CACHE_ROOT SOURCE_MODEL BARRIER_DIR N   prints the path it resolved

The GGUF conversion is stood in for by a copy of SOURCE_MODEL that takes a second (so the processes overlap);
everything around it (staging folder, rename into place, damage check, tokenizer correction) is the real code.
"""

import os
import shutil
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import caopd.models as models


def slow_copy(_source: Path, folder: Path) -> None:
    time.sleep(1.0)
    shutil.copytree(sys.argv[2], folder, dirs_exist_ok=True)


if __name__ == "__main__":
    os.environ["CAOPD_CACHE"] = sys.argv[1]
    models._write_converted_model = slow_copy
    models._gguf_directory = lambda: Path(sys.argv[2])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    barrier = Path(sys.argv[3])  # start together once all N processes have imported what they need
    (barrier / str(os.getpid())).touch()
    while len(list(barrier.iterdir())) < int(sys.argv[4]):
        time.sleep(0.01)
    path = models.embedded_model_path()
    AutoModelForCausalLM.from_pretrained(path)  # whole: loads
    AutoTokenizer.from_pretrained(path)
    print(path)
