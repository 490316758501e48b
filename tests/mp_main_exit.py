"""main.py's ``main()`` on two gloo processes, for test_multiprocess.py: after it returns, no DDP wrapper (and so no
gloo process group) may be left for interpreter shutdown to destroy.

    python tests/mp_main_exit.py OUT [main.py flags...]   writes OUT/leftover_ddp_rank<N>.json (a count)
"""

import gc
import json
import os
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from torch.nn.parallel import DistributedDataParallel

import main

if __name__ == "__main__":
    out = Path(sys.argv[1])
    status = main.main(sys.argv[2:])
    leftover = sum(isinstance(obj, DistributedDataParallel) for obj in gc.get_objects())
    (out / f"leftover_ddp_rank{os.environ['RANK']}.json").write_text(json.dumps(leftover))
    sys.exit(status)
