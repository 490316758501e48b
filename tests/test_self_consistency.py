"""Teacher-Anchored Self-Consistency: P_acc without a verifier, against a greedy teacher-context reference."""

import pytest
from helpers import read_rollouts, toy_trainer

from caopd.tasks import TaskDataError, get_task
from caopd.tasks.custom import resolve_equivalence


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
    with pytest.raises(TaskDataError, match="cannot import"):
        toy_trainer(model, tokenizer, tmp_path, self_consistency=True, equivalence="nosuch:thing")


SCIENCE_A = "<reasoning>\nThe acid donates a proton.\n</reasoning>\n<answer>\nA\n</answer>\nConfidence: 0.9"
SCIENCE_A_OTHER_REASONING = "<reasoning>\nBy elimination.\n</reasoning>\nConfidence: 0.4\n<answer>A</answer>"
SCIENCE_B = "<reasoning>\nThe acid donates a proton.\n</reasoning>\n<answer>\nB\n</answer>"
CALL = 'Thought: {thought}\nAction: getWeather\nAction Input: {{"city": "{city}", "days": 2}}\nConfidence: 0.7'


@pytest.mark.parametrize("spec", ["task", "mcq_letter"])
def test_science_answers_agree_by_their_letter(spec):
    same = resolve_equivalence(spec, get_task("science"))
    assert same(SCIENCE_A_OTHER_REASONING, SCIENCE_A)  # other reasoning, same letter
    assert not same(SCIENCE_B, SCIENCE_A)
    assert not same("no answer tag", "no answer tag either")  # two missing answers do not agree


@pytest.mark.parametrize("spec", ["task", "tooluse"])
def test_tool_use_answers_agree_by_their_calls(spec):
    same = resolve_equivalence(spec, get_task("tooluse"))
    paris = CALL.format(thought="I need the forecast.", city="Paris")
    reordered = 'Thought: Weather, then.\nAction: getWeather\nAction Input: {"days": 2, "city": "Paris"}'
    assert same(reordered, paris)  # other thought, keys in another order: the same call
    assert not same(CALL.format(thought="I need the forecast.", city="Rome"), paris)
    assert not same("I cannot help.", "Nor can I.")


def test_arithmetic_custom_regex_and_user_equivalences():
    assert resolve_equivalence("task", get_task("arithmetic"))("12 + 3 = 15\nAnswer: 15", "Answer: **15**.")
    numeric = resolve_equivalence("task", get_task("custom", "numeric"))
    assert numeric("Answer: about 3.50", "Answer: 3.5") and not numeric("Answer: 3.6", "Answer: 3.5")
    regex = resolve_equivalence("regex:city=(\\w+)", get_task("tooluse"))
    assert regex("go: city=Rome", "city=rome") and not regex("city=Rome", "city=Oslo")
    assert resolve_equivalence("helpers:always_equivalent", get_task("science"))("x", "y")
    assert resolve_equivalence("normalized_exact", get_task("science"))("Answer: Red.", "answer: red")
    with pytest.raises(TaskDataError, match="--equivalence regex"):
        resolve_equivalence("regex:(", get_task("science"))
