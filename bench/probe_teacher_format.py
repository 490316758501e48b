"""Does the teacher keep the student's answer format? A forward-pass check to run before spending a training run.

Self-distillation pulls the student toward the teacher's next-token distribution on the student's own tokens.
If the teacher, once it sees the privileged context, no longer expects the format the verifier reads, the student
drifts off that format (measured in docs/reproduction.md, "Base vs SDFT vs CaOPD": both arms stopped writing
``Answer:``).

For each arithmetic training question this script feeds the first line of the worked demonstration
("18 + 8 = 26") after the student prompt and after the teacher prompts (built by TRL's own
``DemonstrationTeacherContextBuilder`` from our teacher contexts), and prints the mean probability that the next
token starts ``Answer``. It also prints the mean probability of a line break after the demonstration's
``Answer:`` line (the alternative is ending the turn without a confidence line), of the P_acc digits in
``Confidence: 0.62``, which is the CaOPD signal, and of the question's first operand as the response's first
tokens (a teacher that expects other numbers there pulls the student to copy them, e.g. the "12" of a few-shot
turn).

    python bench/probe_teacher_format.py --n 8 --teacher_instruction "Respond like the example."
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.experimental.sdft.sdft_trainer import DemonstrationTeacherContextBuilder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from caopd.checks import positive_int
from caopd.models import resolve_model_name
from caopd.targets import format_confidence, teacher_context
from caopd.tasks.arithmetic import generate_questions
from caopd.user_errors import one_line_errors
from distil_config import DistilConfig

PROBE_P_ACC = 0.625


@torch.no_grad()
def tail_token_probability(model, tokenizer, prompt: list, continuation: str, n_scored: int) -> float:
    """Mean probability the model gives to the last ``n_scored`` tokens of ``continuation`` after the chat prompt.

    The continuation is tokenized together with the prompt, so the scored tokens are the ones seen in context.
    """
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) + continuation
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    probs = model(ids).logits[0, :-1].softmax(-1)
    targets = ids[0, 1:]
    scored = probs[torch.arange(len(targets)), targets][-n_scored:]
    return float(scored.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=8, help="training questions")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument(
        "--teacher_instruction",
        default=None,
        help="also probe teachers whose closing instruction is this (main.py --teacher_instruction)",
    )
    args = parser.parse_args()

    path = resolve_model_name(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    template = DistilConfig.__dataclass_fields__["teacher_prompt_template"].default
    stub_trainer = SimpleNamespace(args=SimpleNamespace(teacher_prompt_template=template))
    builder = DemonstrationTeacherContextBuilder(stub_trainer)
    digit_tokens = len(tokenizer(format_confidence(PROBE_P_ACC)[1:], add_special_tokens=False).input_ids)  # ".62"

    contexts = {"student": (None, None), "SDFT teacher": ("sdft", None), "CaOPD teacher": ("caopd", None)}
    if args.teacher_instruction is not None:
        contexts |= {
            "SDFT, yours": ("sdft", args.teacher_instruction),
            "CaOPD, yours": ("caopd", args.teacher_instruction),
        }
    columns = ("P(Answer | worked line)", "P(newline | Answer line)", "P(P_acc digits)", "P(first operand)")
    means = {name: [0.0] * len(columns) for name in contexts}
    for row in generate_questions(args.n, seed=0, split="train"):
        worked_line = row["demonstration"].split("\n")[0] + "\n"
        target = f"{row['demonstration']}\nConfidence: {format_confidence(PROBE_P_ACC)}"
        operand = worked_line.split(" ")[0]
        operand_tokens = len(tokenizer(operand, add_special_tokens=False).input_ids)
        scored = (
            (worked_line + "Answer", 1),
            (row["demonstration"] + "\n", 1),
            (target, digit_tokens),
            (operand, operand_tokens),
        )
        for name, (arm, instruction) in contexts.items():
            prompt = row["prompt"]
            if arm is not None:
                p_acc = PROBE_P_ACC if arm == "caopd" else None
                context = teacher_context("demo", row["demonstration"], p_acc, instruction)
                prompt = builder.select_generation_prompts([prompt], [context])[0]
            for column, (continuation, n_scored) in enumerate(scored):
                probability = tail_token_probability(model, tokenizer, prompt, continuation, n_scored)
                means[name][column] += probability / args.n

    print(f"{args.n} training questions, {args.model}; CaOPD teacher told P_acc = {format_confidence(PROBE_P_ACC)}")
    print(f"{'':<15}" + "".join(f"{column:>27}" for column in columns))
    for name, values in means.items():
        print(f"{name:<15}" + "".join(f"{value:>27.3f}" for value in values))


if __name__ == "__main__":
    sys.exit(one_line_errors(main))
