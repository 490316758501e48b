"""The one line a stopped or failed run ends with, said once for all its processes.

Every process of a launch meets the same bad flag, file or signal, so each would print the same line: rank 0 alone
prints it. Each process also records its line where torch elastic (``accelerate launch``, torchrun) looks for a
worker's error (``TORCHELASTIC_ERROR_FILE``): an error that only another rank met (its own disk, its own lock check)
is then named by the launcher's report, and ``python -m caopd.launch`` reads it to end in one line
(``caopd.launch``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"


def rank() -> int:
    """This process's global rank (0 when not launched as one of several)."""
    return int(os.environ.get("RANK", "0"))


def end_with(line: str) -> None:
    """Say the run's last line: printed by rank 0 (or by any rank outside a torch elastic launch, where nothing else
    would name a rank's own error), recorded for the launcher by every rank."""
    recorded = _record_for_launcher(line)
    if rank() == 0 or not recorded:
        print(line, file=sys.stderr)


def _record_for_launcher(line: str) -> bool:
    """Write ``line`` in the error-file format torch elastic reads (a message and a timestamp); False where there is
    no launcher to read it or the file cannot be written."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return False
    with contextlib.suppress(OSError):
        with open(path, "w", encoding="utf-8") as file:
            json.dump({"message": line, "timestamp": int(time.time())}, file)
        return True
    return False
