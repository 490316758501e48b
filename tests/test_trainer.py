"""The CaOPD step inside TRL's trainer, on a tiny model: ids, teacher inputs, modes, teacher construction."""

from collections import defaultdict

import pytest
import torch
from helpers import (
    assert_rewritten_with_group_rates,
    capture_batches,
    read_rollouts,
    toy_trainer,
    verify_even_length,
)

from caopd.confidence import confidence_statement_spans
from caopd.targets import kept_token_count, rewrite_completion_text


def _texts(trainer, ids_list):
    return [trainer._decode(trainer._strip_eos(ids)) for ids in ids_list]


def test_caopd_rewrites_completion_ids_and_teacher_contexts(model, tokenizer, tmp_path):
    trainer = toy_trainer(model, tokenizer, tmp_path)
    captured = capture_batches(trainer)
    trainer.train()

    inputs, batch = captured["final"][0]
    verdicts = assert_rewritten_with_group_rates(trainer, captured, k=4)
    assert "old_per_token_logps" not in batch

    teacher_text = tokenizer.decode(batch["teacher_input_ids"][0], skip_special_tokens=True)
    p_first = sum(verdicts[inputs[0]["prompt_uid"]]) / 4
    assert (
        f"Confidence: {p_first:.2f}\n\nNote: The empirical confidence for this question is {p_first:.2f}."
        in teacher_text
    )
    assert f"Question {inputs[0]['prompt_uid']}: name a colour." in teacher_text

    logged = trainer.state.log_history[0]
    assert logged["caopd/p_acc_mean"] == pytest.approx(sum(sum(v) / 4 for v in verdicts.values()) / len(verdicts))
    for key in ("caopd/p_acc_zero_share", "caopd/p_acc_one_share", "caopd/confidence_format_rate", "entropy", "loss",
                "caopd/rollout_confidence_out_of_range"):  # fmt: skip
        assert key in logged


@pytest.mark.parametrize("setting", [{"steps_per_generation": 2}, {"num_iterations": 2}])
def test_p_acc_is_over_whole_groups_when_trl_samples_for_several_steps(model, tokenizer, tmp_path, setting):
    """TRL's generation settings may sample two steps' rollouts at once or train twice on one sampling; each
    prompt's K rollouts are still judged together and its P_acc written into every one of them."""
    trainer = toy_trainer(model, tokenizer, tmp_path, max_steps=2, **setting)
    captured = capture_batches(trainer)
    trainer.train()
    assert len(captured["raw"]) == 1 and trainer.state.global_step == 2  # one sampling served both steps
    verdicts = assert_rewritten_with_group_rates(trainer, captured, k=4)
    assert len(verdicts) == 2 * setting.get("steps_per_generation", 1)  # 2 prompts x K = 4 per step


def test_sampled_prefix_ids_are_kept_exactly(model, tokenizer, tmp_path):
    trainer = toy_trainer(model, tokenizer, tmp_path)
    captured = capture_batches(trainer)
    trainer.train()
    _, batch = captured["final"][0]
    for raw_ids, final_ids in zip(captured["raw"][0], trainer._get_completion_ids_list(batch)):
        raw_ids = trainer._strip_eos(raw_ids)
        text = trainer._decode(raw_ids)
        first_statement = next((start for start, _ in confidence_statement_spans(text)), len(text))
        keep = kept_token_count(raw_ids, first_statement, trainer._decode)
        assert final_ids[:keep] == raw_ids[:keep]
        suffix = trainer._decode(final_ids[keep:-1])
        assert suffix.lstrip("\n").startswith("Confidence: ")


def test_sdft_baseline_keeps_rollouts_and_writes_confidence_one(model, tokenizer, tmp_path):
    trainer = toy_trainer(model, tokenizer, tmp_path, empirical_calibration=False)
    captured = capture_batches(trainer)
    trainer.train()
    _, batch = captured["final"][0]
    assert trainer._get_completion_ids_list(batch) == captured["raw"][0]
    teacher_text = tokenizer.decode(batch["teacher_input_ids"][0], skip_special_tokens=True)
    assert "Confidence: 1.00\n\nNow answer with a response of your own" in teacher_text
    assert "Note:" not in teacher_text
    assert "caopd/p_acc_mean" in trainer.state.log_history[0]  # still measured for comparison


def test_correct_solution_mode_uses_another_correct_rollout(model, tokenizer, tmp_path):
    trainer = toy_trainer(model, tokenizer, tmp_path, teacher_context_mode="correct_solution")
    trainer.train()
    rows = read_rollouts(tmp_path)
    by_uid = defaultdict(list)
    for row in rows:
        by_uid[row["uid"]].append(row)
    fallbacks = 0
    for group in by_uid.values():
        for row in group:
            others = [r["completion"] for r in group if r["correct"] and r is not row]
            assert row["teacher_context"].startswith("Correct solution:\n")
            if others:
                assert any(row["teacher_context"].startswith(f"Correct solution:\n{o.rstrip()}") for o in others)
            else:
                fallbacks += 1
                assert row["teacher_context"].startswith("Correct solution:\nAnswer: colour")
    assert trainer.state.log_history[0]["caopd/solution_fallbacks"] == fallbacks


def test_teacher_is_built_from_the_in_memory_student(model, tokenizer, tmp_path):
    model.config._name_or_path = "/nonexistent/model"
    trainer = toy_trainer(model, tokenizer, tmp_path)
    for student, teacher in zip(trainer.model.parameters(), trainer.teacher_model.parameters()):
        assert torch.equal(student, teacher) and student.data_ptr() != teacher.data_ptr()


def test_teacher_prompts_get_their_own_length_limit(model, tokenizer, tmp_path):
    trainer = toy_trainer(model, tokenizer, tmp_path, max_prompt_length=40, max_teacher_prompt_length=400)
    captured = capture_batches(trainer)
    trainer.train()
    _, batch = captured["final"][0]
    completion = batch["completion_ids"].size(1)
    teacher_prompt_lengths = batch["teacher_attention_mask"][:, :-completion].sum(dim=1)
    assert batch["prompt_mask"].sum(dim=1).max() <= 40
    assert teacher_prompt_lengths.min() > 40
    assert trainer.state.log_history[0]["caopd/teacher_prompt_truncated"] == 0.0


def test_a_rewritten_completion_ends_with_the_stop_token_its_rollout_produced(model, tmp_path):
    """A tokenizer whose EOS is not the end-of-turn token (as Llama 3 ships): each target keeps the stop token its
    rollout produced; a rollout cut by the length limit gets the chat template's end-of-turn token."""
    from tiny_model import real_tokenizer

    tokenizer = real_tokenizer()
    tokenizer.eos_token = "<|endoftext|>"  # id 0; the template still closes turns with <|im_end|> (id 2)
    model.generation_config.eos_token_id = [0, 2]
    trainer = toy_trainer(model, tokenizer, tmp_path)
    assert trainer.end_of_turn_id == 2 and set(trainer.eos_token_ids) == {0, 2}

    words = tokenizer.encode("Blue, I think.\nConfidence: 0.9", add_special_tokens=False)
    scripted = [[*words, 2], [*words, 0], words[:5], [*words, 2]]  # ended on 2, ended on 0, cut, ended on 2
    trainer._generate = lambda prompt_ids: (prompt_ids, [scripted[i % 4] for i in range(len(prompt_ids))])
    captured = capture_batches(trainer)
    trainer.train()

    inputs, batch = captured["final"][0]
    finals = trainer._get_completion_ids_list(batch)
    assert [ids[-1] for ids in finals] == [2, 0, 2, 2] * (len(finals) // 4)
    texts = [trainer._decode(trainer._strip_eos(ids)) for ids in captured["raw"][0]]
    verdicts = defaultdict(list)
    for example, text in zip(inputs, texts):
        verdicts[example["prompt_uid"]].append(verify_even_length(text, None))
    for example, text, final in zip(inputs, texts, finals):
        p_acc = sum(verdicts[example["prompt_uid"]]) / 4
        assert trainer._decode(final[:-1]) == rewrite_completion_text(text, p_acc)


def test_end_of_turn_token_is_read_from_the_chat_template(tokenizer):
    from caopd.prompts import end_of_turn_token

    assert end_of_turn_token(tokenizer, [1, 2]) == 2  # <|im_end|> closes SmolLM2's turns
    assert end_of_turn_token(tokenizer, [0]) == tokenizer.eos_token_id  # the template shows none of these: EOS
