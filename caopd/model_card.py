"""The final model's card (``README.md`` in the output folder), as TRL's trainers write it, with the run added.

TRL's ``create_model_card`` fills its template (base model, tags, the trainer, the method's paper, quick start,
framework versions); the section after it says what this run was (method, backbone, task, base model, the settings
that define the arm) and, when it evaluated held-out questions while training (``caopd.held_out``), their
calibration at each evaluation with the curve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from caopd.atomic import write_text_atomically
from caopd.held_out import CURVE_NAME, evaluations

CARD_NAME = "README.md"
CAOPD_PAPER = {
    "title": "The Illusion of Certainty: Decoupling Capability and Calibration in On-Policy Distillation",
    "id": "2604.16830",
}
HISTORY_COLUMNS = (
    ("accuracy", "accuracy"),
    ("ece", "ECE"),
    ("brier_score", "Brier"),
    ("spr", "SPR"),
    ("overconfidence_gap", "OCG"),
    ("mean_confidence", "mean confidence"),
    ("confidence_format_adherence", "format adherence"),
)


def method_name(backbone: str, calibrated: bool, rl_reward: str | None) -> str:
    """The arm in the paper's words: CaOPD on a backbone, the backbone alone, or an RL baseline."""
    if backbone == "grpo":
        return f"GRPO with the {rl_reward or 'correctness'} reward (an RL baseline of the paper)"
    return f"CaOPD on {backbone.upper()}" if calibrated else f"{backbone.upper()} (no CaOPD: the paper's baseline)"


def run_section(settings: dict[str, Any], history: list[dict[str, Any]], curve: bool) -> str:
    """Markdown: the run's settings as a table, then its held-out calibration (a row per evaluation)."""
    lines = ["", "## This run", "", "| setting | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in settings.items()]
    if history:
        lines += ["", "## Held-out calibration while training", ""]
        lines += ["Questions the run never trained on, answered at the training sampling settings and judged by the"]
        lines += ["task's verifier; the confidence read as the paper's evaluation reads it.", ""]
        lines += ["| step | " + " | ".join(label for _, label in HISTORY_COLUMNS) + " |"]
        lines += ["|---" * (len(HISTORY_COLUMNS) + 1) + "|"]
        for entry in history:
            values = " | ".join(f"{entry[name]:.3f}" for name, _ in HISTORY_COLUMNS)
            lines.append(f"| {entry['step']} | {values} |")
        if curve:
            lines += ["", f"![held-out calibration against the step]({CURVE_NAME})"]
    return "\n".join(lines) + "\n"


class RunModelCard:
    """``create_model_card`` of the CaOPD trainers, mixed in before TRL's trainer class: TRL's card, then the run's
    section. ``card_settings`` (name -> value, with a "base model") is set by the caller before the card is written."""

    card_settings: dict[str, Any] | None = None

    def create_model_card(self, model_name=None, dataset_name=None, tags=None) -> None:
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero() or self.card_settings is None:
            return
        folder = Path(self.args.output_dir)
        card = (folder / CARD_NAME).read_text()
        # TRL names a base model given as a local folder (and the model, when not pushed) "None", as a Hub link
        card = card.replace("[None](https://huggingface.co/None)", f"`{self.card_settings['base model']}`")
        card = card.replace('model="None"', f'model="{folder}"')
        section = run_section(self.card_settings, evaluations(self.state.log_history), (folder / CURVE_NAME).is_file())
        write_text_atomically(folder / CARD_NAME, card + section)
