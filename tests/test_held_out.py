"""Held-out calibration while training (``caopd.held_out``): which questions, each answered once across processes,
the metrics against hand computation, the history a resume keeps, the curve and the model card."""

from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from helpers import TOY_TASK, toy_dataset, toy_trainer

from caopd.held_out import (
    CURVE_NAME,
    LOGGED,
    HeldOut,
    HeldOutHistory,
    held_out_rows,
    prompt_key,
    read_history,
    split_held_out,
)
from caopd.model_card import run_section
from caopd.prompts import encode_chat_prompts
from caopd.tasks import get_task
from caopd.tasks.base import TaskDataError, user_chat


def _prompts(rows: Dataset) -> set[str]:
    return {prompt_key(prompt) for prompt in rows["prompt"]}


def test_held_out_rows_share_no_question_with_the_training_rows():
    rows = toy_dataset(10)
    duplicated = Dataset.from_dict({**rows.to_dict(), "prompt": [*rows["prompt"][:9], rows["prompt"][0]]})
    for size, held_count in ((3, 3), (0.25, 3)):
        kept, held = split_held_out(duplicated, size, seed=0)
        assert len(held) == held_count and not _prompts(kept) & _prompts(held)
        assert len(kept) + len(held) in (10, 9)  # a copy of a held-out question left the training rows too
    assert split_held_out(duplicated, 3, seed=0)[1]["prompt"] == split_held_out(duplicated, 3, seed=0)[1]["prompt"]
    for size, message in ((10, "leave at least one row"), (2.5, "must be whole")):
        with pytest.raises(TaskDataError, match=message):
            split_held_out(rows, size, seed=0)

    given = Dataset.from_dict({**toy_dataset(3).to_dict(), "prompt": [rows["prompt"][0], *map(user_chat, "xy")]})
    task = SimpleNamespace(load=lambda path: given)
    kept, held, source = held_out_rows(task, rows, "given.jsonl", None, generated=False, seed=0)
    assert (
        len(kept) == 10
        and len(held) == 2
        and source == "2 questions of given.jsonl; 1 that the training set also has left out"
    )


def test_arithmetic_holds_out_questions_of_its_validation_split():
    task = get_task("arithmetic")
    train = task.load(None)
    _, held, source = held_out_rows(task, train, None, 5, generated=True, seed=3)
    assert len(held) == 5 and not _prompts(train) & _prompts(held)
    assert source == "5 arithmetic questions of the validation split"


@pytest.mark.parametrize(("questions", "world"), [(5, 2), (7, 3), (1, 2), (4, 4)])
def test_each_question_is_answered_by_one_process_in_equal_shares(questions, world):
    held_out = HeldOut(toy_dataset(questions), [[i] for i in range(questions)], TOY_TASK, "paper")
    shares = [held_out.share(rank, world) for rank in range(world)]
    assert len({len(indices) for indices, _ in shares}) == 1  # TRL's vLLM server mode gathers equal shares
    owned = [index for indices, own in shares for index in indices[:own]]
    assert sorted(owned) == list(range(questions))


ANSWERS = [  # (completion text, even length = correct under the toy verifier, stated confidence)
    "Answer: 12\nConfidence: 0.90",  # 27 characters: wrong
    "Answer: 1\nConfidence: 0.60",  # 26: right
    "Answer: 7\nConfidence: 0.20",  # 26: right
    "Answer: 3",  # 9: wrong, no confidence stated (read as 0)
]


@pytest.mark.parametrize("backbone", ["sdft", "sdpo"])
def test_evaluate_logs_the_metrics_of_the_judged_answers(model, tokenizer, tmp_path, backbone, monkeypatch):
    """Two questions x two answers, sampled by a stand-in for TRL's generation: the logged accuracy, ECE (10 bins),
    Brier and mean confidence are those computed by hand; the model is back in training mode, the random state
    the training draws from unchanged, and the training metrics not mixed into the evaluation's."""
    held_out = HeldOut(toy_dataset(2), [[1, 2], [3, 4]], TOY_TASK, "paper", samples=2, batch_size=2)
    trainer = toy_trainer(model, tokenizer, tmp_path, backbone=backbone, held_out=held_out)
    asked = []

    def sample(prompt_ids):
        asked.append(prompt_ids)
        start = 2 * (len(asked) - 1)
        return [[*tokenizer.encode(text), tokenizer.eos_token_id] for text in ANSWERS[start : start + 2]]

    monkeypatch.setattr(trainer, "sample_completions", sample)
    trainer._metrics["train"]["caopd/p_acc_mean"].append(0.5)
    state = torch.get_rng_state()
    metrics = trainer.evaluate()
    assert asked == [[[1, 2], [1, 2]], [[3, 4], [3, 4]]]  # each question's answers side by side, one batch each
    assert torch.equal(torch.get_rng_state(), state) and trainer.model.training
    confidence, correct = [0.9, 0.6, 0.2, 0.0], [0, 1, 1, 0]
    # ECE, 10 bins: one answer each in bins 9, 6, 2 and 0: |0.9 - 0| + |0.6 - 1| + |0.2 - 1| + |0 - 0|, over 4
    assert metrics["eval_ece"] == pytest.approx((0.9 + 0.4 + 0.8 + 0.0) / 4)
    assert metrics["eval_accuracy"] == 0.5 and metrics["eval_mean_confidence"] == pytest.approx(1.7 / 4)
    assert metrics["eval_brier_score"] == pytest.approx(sum((c - k) ** 2 for c, k in zip(confidence, correct)) / 4)
    assert metrics["eval_confidence_format_adherence"] == 0.75 and metrics["eval_n_samples"] == 4
    logged = trainer.state.log_history[-1]
    assert logged["eval_ece"] == metrics["eval_ece"] and not any(key.startswith("caopd/") for key in logged)
    assert trainer._metrics["train"]["caopd/p_acc_mean"] == [0.5]


def test_evaluate_samples_through_the_backbones_own_generation(model, tokenizer, tmp_path):
    """No stand-in: TRL's generation of the SDPO backbone answers, in eval mode, one completion per prompt."""
    prompt_ids = encode_chat_prompts(tokenizer, list(toy_dataset(3)["prompt"]), enable_thinking=False)
    held_out = HeldOut(toy_dataset(3), prompt_ids, TOY_TASK, "paper", samples=2, batch_size=4)
    trainer = toy_trainer(model, tokenizer, tmp_path, backbone="sdpo", held_out=held_out)
    metrics = trainer.evaluate()
    assert metrics["eval_n_samples"] == 6 and 0 <= metrics["eval_accuracy"] <= 1


def _state(steps: list[int], zero: bool = True) -> SimpleNamespace:
    """A Trainer state whose log history has a training entry and an evaluation at each of ``steps``."""
    history = []
    for step in steps:
        evaluation = {f"eval_{name}": 0.5 for name in LOGGED} | {"eval_ece": 0.1 * step}
        history += [{"loss": 1.0, "step": step}, {**evaluation, "step": step, "epoch": step / 10}]
    return SimpleNamespace(log_history=history, is_world_process_zero=zero)


def test_the_history_is_the_log_historys_evaluations_so_a_resume_keeps_those_up_to_its_step(tmp_path):
    history = HeldOutHistory(str(tmp_path))
    history.on_evaluate(None, _state([2, 4, 6]), None)
    assert [entry["step"] for entry in read_history(tmp_path)] == [2, 4, 6]
    history.on_epoch_begin(None, _state([2, 4]), None)  # resumed from checkpoint-4: its log history ends there
    assert [entry["step"] for entry in read_history(tmp_path)] == [2, 4]
    assert read_history(tmp_path)[1]["ece"] == pytest.approx(0.4)
    history.on_train_end(None, _state([2, 4, 6]), None)
    assert (tmp_path / CURVE_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other_rank = tmp_path / "rank1"
    HeldOutHistory(str(other_rank)).on_train_end(None, _state([2], zero=False), None)
    assert not other_rank.exists()  # the main process writes


def test_the_card_tables_each_evaluation():
    entry = {"step": 2, "accuracy": 0.5, "ece": 0.25, "brier_score": 0.3, "spr": 0.6, "overconfidence_gap": 0.1}
    entry |= {"mean_confidence": 0.6, "confidence_format_adherence": 1.0}
    section = run_section({"method": "CaOPD on SDFT"}, [entry], curve=True)
    assert "| method | CaOPD on SDFT |" in section
    assert "| 2 | 0.500 | 0.250 | 0.300 | 0.600 | 0.100 | 0.600 | 1.000 |" in section
    assert f"]({CURVE_NAME})" in section and "Held-out" not in run_section({}, [], curve=False)
