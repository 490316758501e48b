"""The paper's setup, run as written: thinking off, no silent prompt truncation, the original loss skip."""

import pytest
import yaml
from helpers import toy_trainer
from test_cli import FIXTURE, _error
from tiny_model import save_tiny_model, thinking_tokenizer

import main
from caopd.prompt_lengths import PromptLengthError, check_prompt_lengths
from caopd.prompts import encode_chat_prompts, thinking_mode
from caopd.run_config import RUN_CONFIG_NAME

CHAT = [{"role": "user", "content": "Which tool?"}]


def test_thinking_is_off_by_default_for_student_and_teacher_prompts(model, tmp_path):
    tokenizer = thinking_tokenizer()
    trainer = toy_trainer(model, tokenizer, tmp_path)
    (student,) = trainer._tokenize_prompts([CHAT])
    rendered = tokenizer.decode(student)
    assert rendered.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # the template's empty think block
    teacher_prompt = trainer.teacher_context_builder.select_generation_prompts([CHAT], ["Answer: x"])
    (teacher,) = trainer._tokenize_prompts(teacher_prompt)
    assert tokenizer.decode(teacher).endswith("<think>\n\n</think>\n\n")

    thinking = toy_trainer(model, tokenizer, tmp_path / "on", enable_thinking=True)
    (student_on,) = thinking._tokenize_prompts([CHAT])
    assert tokenizer.decode(student_on).endswith("<|im_start|>assistant\n")


def test_evaluation_renders_prompts_as_training_does(model, tmp_path):
    tokenizer = thinking_tokenizer()
    trainer = toy_trainer(model, tokenizer, tmp_path)
    for enable in (False, True):
        trainer.chat_template_kwargs = {"enable_thinking": enable}
        assert encode_chat_prompts(tokenizer, [CHAT], enable) == trainer._tokenize_prompts([CHAT])
    assert thinking_mode(tokenizer, False) == "off" and thinking_mode(tokenizer, True) == "on"
    assert thinking_mode(__import__("tiny_model").real_tokenizer(), False) == "the chat template has no thinking switch"


def test_prompt_length_policies():
    lengths = [10, 50, 30, 70]
    assert check_prompt_lengths(lengths, 100, "error", "--max_prompt_length").keep == [0, 1, 2, 3]
    with pytest.raises(
        PromptLengthError,
        match=r"2 of 4 prompts are longer than --max_prompt_length 40 tokens \(the longest has 70\): raise "
        r"--max_prompt_length to 70",
    ):
        check_prompt_lengths(lengths, 40, "error", "--max_prompt_length")
    dropped = check_prompt_lengths(lengths, 40, "drop", "--max_prompt_length")
    assert dropped.keep == [0, 2] and "drop leaves them out (2 remain)" in dropped.warning
    cut = check_prompt_lengths(lengths, 40, "truncate", "--max_prompt_length")
    assert cut.keep == [0, 1, 2, 3] and cut.truncated == [1, 3] and "keeps their last 40 tokens" in cut.warning
    with pytest.raises(PromptLengthError, match="leaves no prompt"):
        check_prompt_lengths([50, 60], 40, "drop", "--max_prompt_length")


def test_overlong_prompts_stop_the_cli_before_training(capsys, tmp_path):
    model = save_tiny_model(tmp_path / "model")
    argv = ["--output_dir", str(tmp_path / "o"), "--model_name", str(model), "--train_data", FIXTURE, "--no_wandb"]
    message = _error(capsys, [*argv, "--max_prompt_length", "64"])
    assert "prompts are longer than --max_prompt_length 64 tokens" in message and "--overlong_prompts" in message


@pytest.mark.slow
def test_dropping_overlong_prompts_is_recorded(capsys, tmp_path):
    model = save_tiny_model(tmp_path / "model")
    output = tmp_path / "o"
    argv = ["--output_dir", str(output), "--model_name", str(model), "--train_data", FIXTURE, "--no_wandb"]
    argv += ["--max_steps", "1", "--num_prompts_per_batch", "1", "--num_generations", "2"]
    argv += ["--per_device_train_batch_size", "2", "--max_completion_length", "16", "--warmup_steps", "0"]
    lengths = _fixture_prompt_lengths(model)
    limit = sorted(lengths)[len(lengths) // 2]  # about half the rows are longer
    assert main.main([*argv, "--max_prompt_length", str(limit), "--overlong_prompts", "drop"]) == 0
    assert "--overlong_prompts drop leaves them out" in capsys.readouterr().err
    derived = yaml.safe_load((output / RUN_CONFIG_NAME).read_text())["derived"]
    assert derived["prompts_dropped"] == sum(length > limit for length in lengths) > 0
    assert derived["train_rows"] == len(lengths) - derived["prompts_dropped"]
    assert derived["thinking"] == "the chat template has no thinking switch"


def _fixture_prompt_lengths(model_dir) -> list[int]:
    from transformers import AutoTokenizer

    from caopd.tasks import get_task

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [
        len(ids) for ids in encode_chat_prompts(tokenizer, list(get_task("tooluse").load(FIXTURE)["prompt"]), False)
    ]
