"""Continual training (paper Table 8): tool use to convergence, then science from that checkpoint with the same
settings; both domains evaluated after each stage.

Arms: SDFT and CaOPD (``--arms`` picks among sdft, caopd, sdpo and caopd_sdpo). For each arm: stage 1 trains on
tool use, stage 2 trains on science starting from stage 1's model; after each stage the model is evaluated on tool use
and on science. Does calibration learned on one domain survive training on the next, and does the next keep it?
Writes ``compare.md`` / ``compare.json`` / ``compare.png`` with one row per arm and stage and domain.

    python bench/continual.py --output_dir outputs/continual                    # the paper's scale, 8 GPUs
    python bench/continual.py --output_dir outputs/continual_cpu --cpu_scale     # 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from experiment_scale import ARMS, SHARED, Scale, compare_stage, experiment_main, split_rows

from caopd.user_errors import one_line_errors

DOMAINS = ("tooluse", "science")


def data(scale: Scale, out: Path) -> dict[str, tuple[str, str]]:
    """(train, test) rows per domain: data/prepare_*.py's splits, or at CPU scale the shared sets split in two."""
    if not scale.cpu:
        return {domain: (f"data/{domain}/train", f"data/{domain}/test") for domain in DOMAINS}
    folder = out / "data"
    split_rows(SHARED / "tooluse_eval", folder / "tooluse_train.jsonl", folder / "tooluse_test.jsonl", 60)
    split_rows(SHARED / "science_eval", folder / "science_train.jsonl", folder / "science_test.jsonl", 300)
    return {domain: (str(folder / f"{domain}_train.jsonl"), str(folder / f"{domain}_test.jsonl")) for domain in DOMAINS}


def plan(args: argparse.Namespace, scale: Scale, out: Path) -> list[tuple[str, list[str]]]:
    """The stages, the comparison of every run (labelled arm/stage/domain) last."""
    arms = args.arms
    rows = data(scale, out)
    stages, labels = [], []
    for domain in DOMAINS:
        stages.append(
            (
                f"eval_base_{domain}",
                scale.evaluate(domain, rows[domain][1], scale.model, out / "eval" / f"base_{domain}"),
            )
        )
        labels.append(f"base/{domain}")
    for arm in arms:
        previous = None
        for number, domain in enumerate(DOMAINS, start=1):
            model = out / arm / f"stage{number}"
            stages.append(
                (f"train_{arm}_stage{number}", scale.train(ARMS[arm], domain, rows[domain][0], model, previous))
            )
            for tested in DOMAINS:
                name = f"{arm}_stage{number}_{tested}"
                stages.append(
                    (f"eval_{name}", scale.evaluate(tested, rows[tested][1], str(model), out / "eval" / name))
                )
                labels.append(f"{arm}/stage{number}/{tested}")
            previous = str(model)
    return [*stages, compare_stage(out, labels)]


def main(argv: list[str] | None = None) -> int:
    return experiment_main(__doc__.split("\n\n")[0], plan, argv)


if __name__ == "__main__":
    sys.exit(one_line_errors(main))
