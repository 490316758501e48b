"""Out-of-distribution transfer (paper Fig. 3a, Table 7): train on tool use, evaluate on science.

Arms: the untrained model, SDFT and CaOPD (``--arms`` picks among sdft, caopd, sdpo and caopd_sdpo), each trained on
tool use and evaluated on science, where none of them was trained; the question is whether CaOPD's calibration carries
to a domain it never saw. Writes ``compare.md`` / ``compare.json`` / ``compare.png`` (``eval/compare.py``) in
--output_dir; stages resume as in ``bench/reproduce.py``.

    python bench/ood.py --output_dir outputs/ood                           # the paper's scale, 8 GPUs
    python bench/ood.py --output_dir outputs/ood_cpu --cpu_scale            # minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from experiment_scale import ARMS, SHARED, Scale, compare_stage, experiment_main

from caopd.user_errors import one_line_errors


def plan(args: argparse.Namespace, scale: Scale, out: Path) -> list[tuple[str, list[str]]]:
    arms = args.arms
    if scale.cpu:  # every shared tool-use row trains; science is only evaluated
        tooluse, science = str(SHARED / "tooluse_eval"), str(SHARED / "science_eval")
    else:
        tooluse, science = "data/tooluse/train", "data/science/test"
    stages = [("eval_base", scale.evaluate("science", science, scale.model, out / "eval" / "base"))]
    for arm in arms:
        stages.append((f"train_{arm}", scale.train(ARMS[arm], "tooluse", tooluse, out / arm)))
        stages.append((f"eval_{arm}", scale.evaluate("science", science, str(out / arm), out / "eval" / arm)))
    return [*stages, compare_stage(out, ["base", *arms])]


def main(argv: list[str] | None = None) -> int:
    return experiment_main(__doc__.split("\n\n")[0], plan, argv)


if __name__ == "__main__":
    sys.exit(one_line_errors(main))
