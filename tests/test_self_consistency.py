"""Teacher-Anchored Self-Consistency: P_acc without a verifier, against a greedy teacher-context reference."""

from helpers import read_rollouts, toy_trainer

from caopd.tasks import TaskDataError


def test_equivalence_decides_p_acc_instead_of_the_verifier(model, tokenizer, tmp_path):
    trainer = toy_trainer(model, tokenizer, tmp_path, self_consistency=True, equivalence="helpers:always_equivalent")
    calls = []
    generate = trainer._generate

    def recording_generate(prompt_ids):
        calls.append(([tokenizer.decode(ids) for ids in prompt_ids], trainer.generation_config.do_sample))
        return generate(prompt_ids)

    trainer._generate = recording_generate
    trainer.train()
    rows = read_rollouts(tmp_path)
    assert rows and all(row["correct"] and row["p_acc"] == 1.0 for row in rows)  # the toy verifier would vary
    (_, rollout_sampling), (reference_prompts, reference_sampling) = calls
    assert rollout_sampling and not reference_sampling  # the reference is greedy
    assert len(reference_prompts) == len(set(row["uid"] for row in rows))  # one reference per prompt
    assert all("This is an example for a response to the question:\nAnswer: colour" in p for p in reference_prompts)
    assert all("Confidence: 1.00" in p for p in reference_prompts)


def test_default_equivalence_compares_final_answers(model, tokenizer, tmp_path):
    trainer = toy_trainer(model, tokenizer, tmp_path, self_consistency=True)
    assert trainer._equivalent("blah\nAnswer: Red.\nConfidence: 0.3", "Answer: red")
    assert not trainer._equivalent("Answer: blue", "Answer: red")


def test_bad_equivalence_is_a_clear_error(model, tokenizer, tmp_path):
    import pytest

    with pytest.raises(TaskDataError, match="cannot import"):
        toy_trainer(model, tokenizer, tmp_path, self_consistency=True, equivalence="nosuch:thing")
