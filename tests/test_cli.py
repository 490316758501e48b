"""The CLI: flags and YAML, one clear message per user error, and an end-to-end run that saves a loadable model."""

import argparse
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from helpers import assert_lock_released
from transformers import AutoModelForCausalLM

import main
from caopd.cli import CLIError, build_parser, parse_args, setting_warnings
from caopd.run_config import RUN_CONFIG_NAME

FIXTURE = str(ROOT / "tests" / "fixtures" / "tooluse_rows.jsonl")


def _error(capsys, argv) -> str:
    assert main.main(argv) == 2
    stderr = capsys.readouterr().err
    message = stderr.strip().replace("\r", "\n").splitlines()[-1]  # progress bars may come first
    assert message.startswith("error: ") and "Traceback" not in stderr
    return message


def test_original_flags_and_defaults():
    args = parse_args(["--output_dir", "out"])
    assert (args.learning_rate, args.num_train_epochs, args.num_prompts_per_batch) == (2e-5, 1, 32)
    assert (args.ref_model_mixup_alpha, args.dataset_name, args.seed, args.num_generations) == (0.01, "tooluse", 42, 8)
    assert (args.max_prompt_length, args.max_completion_length, args.vllm_gpu_memory_utilization) == (1024, 1024, 0.3)
    assert (args.no_empirical_calibration, args.no_wandb, args.distillation_alpha) == (False, False, 1.0)
    sdft = main.build_config(parse_args(["--output_dir", "out", "--no_wandb"]), 1)
    assert (sdft.teacher_context_mode, sdft.num_loss_tokens_to_skip) == ("demo", 3)  # the original skips 3 tokens
    sdpo = main.build_config(parse_args(["--output_dir", "out", "--no_wandb", "--backbone", "sdpo"]), 1)
    assert (sdpo.num_loss_tokens_to_skip, sdpo.distillation_mode, sdpo.distillation_is_clip) == (
        0,
        "sampled_token",
        2.0,
    )
    assert "distinct questions per optimizer step" in build_parser().format_help()


def test_yaml_config_and_command_line_precedence(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"output_dir": "from_yaml", "learning_rate": "3e-6", "num_generations": 4}))
    args = parse_args(["--config", str(config), "--num_generations", "16"])
    assert (args.output_dir, args.learning_rate, args.num_generations) == ("from_yaml", 3e-6, 16)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--output_dir is required"),
        (["--output_dir", "o", "--max_steps", "0"], "--max_steps must be positive"),
        (["--output_dir", "o", "--per_device_train_batch_size", "3", "--no_wandb"], "not a multiple of"),
        (["--output_dir", "o", "--resume_from_checkpoint", "/nope", "--no_wandb"], "not a checkpoint folder"),
        (
            ["--output_dir", "/nonexistent/o", "--resume_from_checkpoint", "latest", "--no_wandb"],
            "no complete checkpoint-",
        ),
        (["--output_dir", "o", "--use_vllm", "--no_wandb"], "vLLM is not installed"),
        (["--output_dir", "o", "--report_to", "wandb"], "pip install wandb"),
        (["--output_dir", "o", "--bf16", "--no_wandb"], "--bf16 needs a GPU"),
        (["--output_dir", "o", "--train_data", "/nope.jsonl", "--no_wandb"], "training data not found"),
        (["--output_dir", "o", "--teacher_instruction", " ", "--no_wandb"], "teacher_instruction is empty"),
    ],
)
def test_bad_flags_give_one_clear_message(capsys, argv, message):
    assert message in _error(capsys, argv)


def test_bad_yaml_configs(capsys, tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("output_dir: o\nlearning_rat: 1e-5\n")
    assert "unknown key(s) learning_rat" in _error(capsys, ["--config", str(unknown)])
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("output_dir: o\nnum_generations: many\n")
    assert "num_generations='many' is not valid: invalid int value" in _error(capsys, ["--config", str(wrong)])
    broken = tmp_path / "broken.yaml"
    broken.write_text("output_dir: [unclosed\n")
    assert "not valid YAML" in _error(capsys, ["--config", str(broken)])
    assert "cannot read it" in _error(capsys, ["--config", str(tmp_path / "missing.yaml")])


def test_yaml_values_are_typed_strictly(capsys, tmp_path):
    config = tmp_path / "run.yaml"
    for written, read in (('"false"', False), ("false", False), ('"true"', True), ("true", True)):
        config.write_text(f"output_dir: o\noverwrite_output_dir: {written}\n")
        assert parse_args(["--config", str(config)]).overwrite_output_dir is read
    config.write_text("output_dir: o\nreport_to: [wandb, tensorboard]\n")  # a list, as TrainingArguments takes it
    assert parse_args(["--config", str(config)]).report_to == "wandb,tensorboard"
    for value, message in (("0", "must be true or false, got 0"), ("[true]", "must be true or false")):
        config.write_text(f"output_dir: o\nself_consistency: {value}\n")
        assert message in _error(capsys, ["--config", str(config)])
    config.write_text("output_dir: o\nsave_total_limit: -1\n")  # would delete every checkpoint if taken
    assert "save_total_limit=-1 is not valid: must be a positive integer" in _error(capsys, ["--config", str(config)])


@pytest.mark.parametrize(
    ("flags", "uses_vllm", "expected"),
    [
        (["--backbone", "grpo", "--car_margin", "0.3"], False, "--car_margin is read by --rl_reward car only"),
        (["--backbone", "grpo", "--rl_reward", "car", "--car_margin", "0.3"], False, None),
        (["--vllm_mode", "server"], False, "--vllm_mode server is unused"),
        (["--vllm_mode", "server"], True, None),
        (["--backbone", "sdpo", "--distillation_weight", "0"], False, "this run cannot calibrate"),
        (["--backbone", "sdpo", "--distillation_weight", "0", "--no_empirical_calibration"], False, None),
    ],
)
def test_settings_that_do_nothing_are_warned_about(flags, uses_vllm, expected):
    args = parse_args(["--output_dir", "unused", *flags])
    warnings = setting_warnings(args, uses_vllm)
    assert (warnings == []) if expected is None else (len(warnings) == 1 and expected in warnings[0])


def test_scheduler_arguments_reach_the_trainer():
    argv = ["--output_dir", "o", "--no_wandb", "--lr_scheduler_type", "cosine_with_min_lr"]
    args = parse_args([*argv, "--lr_scheduler_kwargs", '{"min_lr_rate": 0.1}'])
    config = main.build_config(args, 1)
    assert (config.lr_scheduler_type, config.lr_scheduler_kwargs) == ("cosine_with_min_lr", {"min_lr_rate": 0.1})


def test_model_folder_without_config(capsys, tmp_path):
    argv = ["--output_dir", str(tmp_path / "o"), "--model_name", str(tmp_path), "--train_data", FIXTURE, "--no_wandb"]
    assert "has no config.json" in _error(capsys, argv)


def _tiny_argv(tmp_path) -> list[str]:
    """Flags of a one-step run of a tiny model (saved here) into ``tmp_path / "run"``."""
    from tiny_model import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "tiny")
    argv = ["--output_dir", str(tmp_path / "run"), "--model_name", str(model_dir), "--train_data", FIXTURE]
    argv += ["--no_wandb", "--max_steps", "1", "--num_prompts_per_batch", "2", "--num_generations", "2"]
    return [*argv, "--per_device_train_batch_size", "4", "--max_completion_length", "24", "--max_prompt_length", "256"]


def _tiny_run(tmp_path, *extra):
    assert main.main(_tiny_argv(tmp_path) + list(extra)) == 0
    return tmp_path / "run"


@pytest.mark.parametrize("installed", [[], ["wandb", "tensorboard"]])
def test_reporting_defaults_to_wandb_where_it_is_installed_and_says_so_where_not(installed, monkeypatch, capsys):
    monkeypatch.setattr(main, "get_available_reporting_integrations", lambda: installed)
    config = main.build_config(parse_args(["--output_dir", "out"]), 1)
    assert config.report_to == (["wandb"] if installed else [])
    note = capsys.readouterr().err
    assert ("wandb is not installed, so this run reports to no tracker" in note) == (not installed)


def test_push_to_hub_goes_through_the_trainer_and_uploads_the_final_folder_with_its_card(tmp_path, monkeypatch):
    """The Hub stubbed at its boundary (transformers' repository creation and checkpoint push, huggingface_hub's
    upload): the Trainer pushes its checkpoints, and at the end the final folder, with its model card, is uploaded
    once to the repository the flags name."""
    from transformers import Trainer

    pushed, uploaded = [], []
    monkeypatch.setattr(Trainer, "init_hf_repo", lambda self, token=None: setattr(self, "hub_model_id", "me/run"))
    monkeypatch.setattr(Trainer, "_push_from_checkpoint", lambda self, folder: pushed.append(folder))

    def upload(**kwargs):
        uploaded.append({**kwargs, "card": (Path(kwargs["folder_path"]) / "README.md").read_text()})

    monkeypatch.setattr(main, "upload_folder", upload)
    output = _tiny_run(tmp_path, "--save_steps", "1", "--push_to_hub", "--hub_model_id", "me/run", "--hub_private_repo")
    assert pushed == [str(output / "checkpoint-1")]
    (final,) = uploaded
    assert (
        final["repo_id"] == "me/run"
        and final["folder_path"] == str(output)
        and "checkpoint-*" in final["ignore_patterns"]
    )
    assert "This model was trained with CaOPD, a method introduced in" in final["card"]
    assert "| method | CaOPD on SDFT |" in final["card"] and "| base model | " in final["card"]
    assert yaml.safe_load((output / RUN_CONFIG_NAME).read_text())["trainer"]["hub_private_repo"] is True


def test_end_to_end_run_saves_a_loadable_model_and_the_resolved_config(tmp_path):
    output = _tiny_run(tmp_path, "--save_steps", "1")
    config = yaml.safe_load((output / RUN_CONFIG_NAME).read_text())
    assert config["flags"]["num_prompts_per_batch"] == 2
    assert config["derived"]["gradient_accumulation_steps"] == 1
    assert config["trainer"]["teacher_update_rate"] == 0.01
    assert (output / "checkpoint-1" / "teacher" / "model.safetensors").is_file()
    assert AutoModelForCausalLM.from_pretrained(output).config.vocab_size > 0


def test_lora_run_saves_a_merged_model(tmp_path):
    output = _tiny_run(tmp_path, "--use_peft", "--lora_r", "4", "--lora_alpha", "8")
    model = AutoModelForCausalLM.from_pretrained(output)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert (output / "adapter" / "adapter_config.json").is_file()


def test_completion_limit_without_room_for_the_confidence_line(capsys, tmp_path):
    from tiny_model import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "tiny")
    argv = ["--output_dir", str(tmp_path / "o"), "--model_name", str(model_dir), "--train_data", FIXTURE]
    argv += ["--no_wandb", "--max_completion_length", "5", "--num_prompts_per_batch", "1"]
    assert "Raise --max_completion_length" in _error(capsys, argv)


def test_resume_needs_a_checkpoint_with_its_teacher(capsys, tmp_path):
    output = _tiny_run(tmp_path, "--save_steps", "1")
    argv = ["--output_dir", str(output), "--resume_from_checkpoint", "latest", "--no_wandb"]
    assert main.resume_argument(main.parse_args(argv)) == str(output / "checkpoint-1")
    import shutil

    from caopd.checkpoints import write_marker

    shutil.rmtree(output / "checkpoint-1" / "teacher")
    assert "no complete checkpoint-" in _error(capsys, [*argv, "--train_data", FIXTURE])  # a file is missing
    write_marker(output / "checkpoint-1", 1)  # complete, but without a teacher (as a --teacher_model_kind base run)
    assert "holds no EMA teacher" in _error(capsys, [*argv, "--train_data", FIXTURE])


def test_a_full_disk_at_the_final_save_is_one_line_and_leaves_no_model_folder(capsys, tmp_path, monkeypatch):
    import errno

    import transformers.modeling_utils

    def disk_full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    argv = _tiny_argv(tmp_path)
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    assert main.main(argv) == 2
    output = tmp_path / "run"
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: the disk is full ([Errno 28] No space left on device); free some space, then")
    assert not any((output / name).exists() for name in ("config.json", "tokenizer_config.json", main.FINAL_STAGING))
    assert_lock_released(output)


def test_resume_under_other_settings_is_refused_or_warned(capsys, tmp_path):
    output = _tiny_run(tmp_path, "--save_steps", "1")
    checkpoint = output / "checkpoint-1"
    assert (checkpoint / "caopd_run.json").is_file()
    flags = ["--output_dir", str(output), "--model_name", str(tmp_path / "tiny"), "--train_data", FIXTURE]
    flags += ["--no_wandb", "--resume_from_checkpoint", "latest", "--num_prompts_per_batch", "2"]
    same = parse_args([*flags, "--num_generations", "2"])
    assert main.resume_argument(same, main.run_identity(same, str(tmp_path / "tiny"))) == str(checkpoint)
    other_k = parse_args([*flags, "--num_generations", "4"])
    main.resume_argument(other_k, main.run_identity(other_k, str(tmp_path / "tiny")))
    warning = capsys.readouterr().err.strip().splitlines()[-1]
    assert warning.startswith(f"warning: resuming {checkpoint} with num_generations 2 -> 4 (sound:")
    lora = [*flags, "--num_generations", "2", "--per_device_train_batch_size", "4", "--use_peft"]
    lora += ["--dataset_name", "science"]
    message = _error(capsys, lora)
    assert "use_peft: False then, True now" in message and "dataset_name: 'tooluse' then, 'science' now" in message


def _combinations() -> list[tuple[str, str]]:
    """(flag, backbone) for every backbone-specific flag given to a backbone that does not have it."""
    from caopd.cli import BACKBONE_SETTINGS, DISTILLATION_ONLY, SDFT_ONLY

    owners = {name: backbones for name, (_, backbones, _) in BACKBONE_SETTINGS.items()}
    owners |= dict.fromkeys(SDFT_ONLY, ("sdft",)) | dict.fromkeys(DISTILLATION_ONLY, ("sdft", "sdpo"))
    backbones = ("sdft", "sdpo", "grpo")
    return [(name, backbone) for name, have in owners.items() for backbone in backbones if backbone not in have]


def _given(name: str) -> list[str]:
    """The flag with a legal value other than its default."""
    action = next(action for action in build_parser()._actions if action.dest == name)
    if isinstance(action, argparse.BooleanOptionalAction):  # the spelling that turns it from its default
        return [action.option_strings[1] if action.default else action.option_strings[0]]
    if action.nargs == 0:
        return [action.option_strings[0]]
    if action.choices:
        return [action.option_strings[0], next(str(c) for c in action.choices if c != action.default)]
    if action.option_strings[0].startswith("--no-"):
        return [action.option_strings[0]]
    if name in ("rl_reward", "equivalence"):
        return [action.option_strings[0], {"rl_reward": "rlcr", "equivalence": "exact"}[name]]
    if action.type is None:
        return [action.option_strings[0], "x"]
    for sample in ("0.5", "3"):
        try:
            action.type(sample)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            continue
        return [action.option_strings[0], sample]
    raise AssertionError(f"no sample value for --{name}")


@pytest.mark.parametrize(("name", "backbone"), _combinations(), ids=[f"{n}-{b}" for n, b in _combinations()])
def test_a_flag_the_backbone_does_not_have_is_refused_by_name(name, backbone):
    with pytest.raises(CLIError) as refused:
        parse_args(["--output_dir", "o", "--backbone", backbone, *_given(name)])
    assert f"--{name}" in str(refused.value) and backbone in str(refused.value)


def test_one_rollout_per_question(tmp_path, capsys):
    """SDPO could never distil (no sibling to show) and GRPO has no advantage: both refused; on SDFT CaOPD's
    P_acc is 0 or 1, legal but worth a warning."""
    flags = ["--output_dir", str(tmp_path / "o"), "--no_wandb", "--num_generations", "1", "--backbone"]
    assert "one rollout has none, so no step would distil" in _error(capsys, [*flags, "sdpo"])
    without_self = [*flags, "sdpo", "--no-dont_reprompt_on_self_success", "--distillation_weight", "0.5"]
    assert "group advantage needs 2 or more" in _error(capsys, without_self)
    assert "GRPO requires at least 2 generations" in _error(capsys, [*flags, "grpo"])
    args = parse_args([*flags, "sdft"])
    assert any("P_acc from one rollout is 0 or 1" in warning for warning in setting_warnings(args, False))
