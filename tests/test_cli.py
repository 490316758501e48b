"""The CLI: flags and YAML, one clear message per user error, and an end-to-end run that saves a loadable model."""

from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from helpers import assert_lock_released
from transformers import AutoModelForCausalLM

import main
from caopd.checks import CLIError
from caopd.cli import build_parser, parse_args
from caopd.flag_validation import setting_warnings
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
    assert (args.teacher_update_rate, args.dataset_name, args.seed, args.num_generations) == (0.01, "tooluse", 42, 8)
    assert (args.max_prompt_length, args.max_completion_length, args.vllm_gpu_memory_utilization) == (1024, 1024, 0.3)
    assert (args.empirical_calibration, args.no_wandb, args.distillation_alpha) == (True, False, 1.0)
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


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num_iterations", "0"], "argument --num_iterations: must be a positive integer"),  # trained 0 steps, rc 0
        (["--steps_per_generation", "0"], "argument --steps_per_generation: must be a positive integer"),
        (["--adam_beta1", "1"], "argument --adam_beta1: must be a number in [0, 1)"),  # torch's traceback at step 1
        (["--repetition_penalty", "-1"], "argument --repetition_penalty: must be a positive number"),
        (["--top_p", "0"], "argument --top_p: must be a number in (0, 1]"),
        (["--vllm_gpu_memory_utilization", "0"], "argument --vllm_gpu_memory_utilization: must be a number in (0, 1]"),
        (["--backbone", "grpo", "--beta", "-0.1"], "argument --beta: must be a number, 0 or more"),
        (["--backbone", "grpo", "--ref_model_mixup_alpha", "2"], "argument --ref_model_mixup_alpha: must be a number"),
    ],
)
def test_trl_settings_that_would_fail_mid_run_are_refused_by_their_range(capsys, flags, message):
    with pytest.raises(SystemExit) as stop:  # argparse's line, naming the flag, before anything loads
        main.main(["--output_dir", "o", "--no_wandb", *flags])
    stderr = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith(f"error: {message}")


def test_a_checked_setting_whose_default_is_none_takes_none_as_trls_parser_does():
    flags = ["--steps_per_generation", "none", "--min_p", "null", "--eval_steps", "None"]
    args = parse_args(["--output_dir", "o", *flags])
    assert (args.steps_per_generation, args.min_p, args.eval_steps) == (None, None, None)
    assert parse_args(["--output_dir", "o", "--steps_per_generation", "2"]).steps_per_generation == 2


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
    listed = tmp_path / "listed.yaml"
    listed.write_text("output_dir: o\nbackbone: [sdft]\n")
    assert "backbone must be one of sdft, sdpo, grpo, got ['sdft']" in _error(capsys, ["--config", str(listed)])
    scheduler = tmp_path / "scheduler.yaml"  # a dict field as a YAML mapping, as TRL's scripts take it
    scheduler.write_text(
        "output_dir: o\nlr_scheduler_type: cosine_with_min_lr\nlr_scheduler_kwargs: {min_lr_rate: 0.1}\n"
    )
    assert parse_args(["--config", str(scheduler)]).lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    with pytest.raises(SystemExit):
        main.main(["--output_dir", "o", "--config"])
    assert capsys.readouterr().err.strip().endswith("error: argument --config: expected one argument")


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
        (["--backbone", "grpo", "--ref_model_mixup_alpha", "0.05"], False, "TRL's reference-model mixup"),
        (["--backbone", "grpo", "--ref_model_mixup_alpha", "0.05", "--sync_ref_model"], False, None),
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


def test_help_lists_the_trainers_fields_and_each_backbones_own(capsys):
    """TRL's parser over the backbone's config: every Trainer field is a flag, under TRL's names."""
    with pytest.raises(SystemExit) as done:
        main.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--run_name", "--save_strategy", "--hub_strategy", "--adam_beta2", "--model_name_or_path", "--config"):
        assert flag in text
    assert "--distillation_weight" not in text  # SDPO's, listed with --backbone sdpo --help
    with pytest.raises(SystemExit):
        main.main(["--backbone", "sdpo", "--help"])
    assert "--distillation_weight" in capsys.readouterr().out


def test_any_trainer_field_reaches_the_config():
    argv = ["--output_dir", "o", "--no_wandb", "--run_name", "mine", "--adam_beta2", "0.95", "--save_strategy", "epoch"]
    config = main.build_config(
        parse_args([*argv, "--optim", "adafactor", "--lora_target_modules", "q_proj", "v_proj"]), 1
    )
    assert (config.run_name, config.adam_beta2, config.save_strategy, config.optim) == (
        "mine",
        0.95,
        "epoch",
        "adafactor",
    )


def test_the_original_spellings_are_aliases_of_trls():
    spelled = {
        ("--model_name", "m"): ("model_name_or_path", "m"),
        ("--ref_model_mixup_alpha", "0.2"): ("teacher_update_rate", 0.2),
        ("--no-chunked_loss",): ("chunked_loss", False),
        ("--no-use_vllm",): ("use_vllm", False),
        ("--no-bf16",): ("bf16", False),
        ("--no_empirical_calibration",): ("empirical_calibration", False),
        ("--no_shared_prefix",): ("shared_prefix", False),
        ("--use_peft",): ("use_peft", True),
        ("--use_peft", "false"): ("use_peft", False),
    }
    for flags, (name, value) in spelled.items():
        args = parse_args(["--output_dir", "o", *flags])
        assert getattr(args, name) == value, flags
        assert name in args.given_settings
    args = parse_args(["--output_dir", "o", "--backbone", "sdpo", "--no-dont_reprompt_on_self_success"])
    assert args.dont_reprompt_on_self_success is False


def test_yaml_as_in_trl_scripts_with_its_env_block_and_old_keys(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("CAOPD_TEST_ENV", raising=False)
    config = tmp_path / "run.yaml"
    values = {"env": {"CAOPD_TEST_ENV": 7}, "output_dir": "o", "model_name": "m", "no_empirical_calibration": True}
    config.write_text(yaml.safe_dump({**values, "backbone": "sdpo", "distillation_weight": 0.5}))
    args = parse_args(["--config", str(config)])
    assert (args.backbone, args.distillation_weight, args.model_name_or_path) == ("sdpo", 0.5, "m")
    assert args.empirical_calibration is False and main.os.environ["CAOPD_TEST_ENV"] == "7"
    config.write_text(yaml.safe_dump({"output_dir": "o", "env": ["A=1"]}))
    assert "env must map variable names to plain values" in _error(capsys, ["--config", str(config)])
    config.write_text(yaml.safe_dump({"output_dir": "o", "distillation_weight": 0.5}))
    assert "distillation_weight is a setting of --backbone sdpo" in _error(capsys, ["--config", str(config)])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gradient_accumulation_steps", "4"], "--gradient_accumulation_steps is set by this CLI"),
        (["--use_cpu"], "--use_cpu is set by this CLI"),
        (["--load_in_4bit"], "--load_in_4bit is a setting of TRL's ModelConfig that this CLI does not apply"),
        (["--not_a_flag", "1"], "unrecognized arguments: --not_a_flag 1"),
        (["--model_init_kwargs", '{"dtype": "float32"}'], "--model_init_kwargs is set by this CLI"),
        (["--optim_args", "eps"], "--optim_args 'eps': write key=value pairs joined by commas"),
        (["--use_liger_kernel"], "--use_liger_kernel needs the liger-kernel package"),
    ],
)
def test_settings_this_cli_decides_or_ignores_are_refused(capsys, flags, message, monkeypatch):
    monkeypatch.setattr("caopd.flag_validation.is_liger_kernel_available", lambda: False)
    try:
        code = main.main(["--output_dir", "o", *flags])
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code
    assert code == 2 and message in capsys.readouterr().err


def test_mapping_settings_take_json_on_the_command_line_and_a_mapping_in_yaml(capsys, tmp_path):
    """SDFT's generation_kwargs is typed dict only: TRL's parser would read its text as dict(text), refusing all."""
    flags = ["--output_dir", "o", "--no_wandb"]
    config = main.build_config(parse_args([*flags, "--generation_kwargs", '{"top_k": 5}']), 1)
    assert config.generation_kwargs == {"top_k": 5}
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("output_dir: o\nno_wandb: true\ngeneration_kwargs: {top_k: 5, min_p: 0.1}\n")
    assert parse_args(["--config", str(yaml_file)]).generation_kwargs == {"top_k": 5, "min_p": 0.1}
    with pytest.raises(SystemExit):
        main.main([*flags, "--generation_kwargs", "[5]"])
    assert "error: argument --generation_kwargs: must be a JSON object" in capsys.readouterr().err


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


def test_an_optimizer_the_trainer_cannot_build_is_refused_before_training(capsys, tmp_path):
    # GaLore needs its package and --optim_target_modules: either is missing here, as the Trainer would find at step 1
    assert "error: --optim galore_adamw: " in _error(capsys, [*_tiny_argv(tmp_path), "--optim", "galore_adamw"])
    assert not (tmp_path / "run" / "checkpoint-1").exists()


@pytest.mark.parametrize("installed", [[], ["wandb", "tensorboard"]])
def test_reporting_defaults_to_wandb_where_it_is_installed_and_says_so_where_not(installed, monkeypatch, capsys):
    monkeypatch.setattr(main, "get_available_reporting_integrations", lambda: installed)
    config = main.build_config(parse_args(["--output_dir", "out"]), 1)
    assert config.report_to == (["wandb"] if installed else [])
    note = capsys.readouterr().err
    assert ("wandb is not installed, so this run reports to no tracker" in note) == (not installed)
    if installed:  # several integrations, as a YAML list or comma-separated, reach the Trainer as a list
        given = main.build_config(parse_args(["--output_dir", "out", "--report_to", "wandb,tensorboard"]), 1)
        assert given.report_to == ["wandb", "tensorboard"]
    assert main.build_config(parse_args(["--output_dir", "out", "--report_to", "none"]), 1).report_to == []


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


# Settings one backbone has and another lacks (the original release's and TRL's): (flag, backbones that have it).
BACKBONE_ONLY = {
    "--distillation_weight": ("sdpo",),
    "--success_reward_threshold": ("sdpo",),
    "--no-dont_reprompt_on_self_success": ("sdpo",),
    "--include_environment_feedback": ("sdpo",),
    "--reprompt_template": ("sdpo",),
    "--loss_type": ("sdpo", "grpo"),
    "--epsilon": ("sdpo", "grpo"),
    "--scale_rewards": ("sdpo", "grpo"),
    "--rl_reward": ("grpo",),
    "--car_margin": ("grpo",),
    "--distillation_mode": ("sdft", "sdpo"),
    "--distillation_topk": ("sdft", "sdpo"),
    "--ref_model_mixup_alpha": ("sdft", "sdpo", "grpo"),  # GRPO: TRL's reference-model setting of that name
    "--no_empirical_calibration": ("sdft", "sdpo"),
    "--self_consistency": ("sdft", "sdpo"),
    "--no-chunked_loss": ("sdft", "sdpo"),
    "--teacher_context_mode": ("sdft",),
    "--teacher_instruction": ("sdft",),
}
VALUES = {
    "--distillation_topk": "3",
    "--reprompt_template": "{prompt}{solution}{feedback} Solve it.",
    "--loss_type": "grpo",
    "--scale_rewards": "batch",
}
VALUES |= {"--rl_reward": "rlcr", "--distillation_mode": "full_logits", "--teacher_context_mode": "correct_solution"}


def _combinations() -> list[tuple[str, str]]:
    """(flag, backbone) for every backbone-specific flag given to a backbone that does not have it."""
    backbones = ("sdft", "sdpo", "grpo")
    return [(flag, backbone) for flag, have in BACKBONE_ONLY.items() for backbone in backbones if backbone not in have]


def _given(flag: str, owner: str) -> list[str]:
    """The flag with a legal value other than its default."""
    action = build_parser(owner)._option_string_actions[flag]
    if action.nargs == 0 or action.nargs == "?":
        return [flag]
    if flag in VALUES:
        return [flag, VALUES[flag]]
    return [flag, "0.5" if action.type is not str else "x"]


@pytest.mark.parametrize(("flag", "backbone"), _combinations(), ids=[f"{f}-{b}" for f, b in _combinations()])
def test_a_flag_the_backbone_does_not_have_is_refused_by_name(flag, backbone):
    owner = BACKBONE_ONLY[flag][0]
    parse_args(["--output_dir", "o", "--backbone", owner, *_given(flag, owner)])  # legal where it belongs
    with pytest.raises(CLIError) as refused:
        parse_args(["--output_dir", "o", "--backbone", backbone, *_given(flag, owner)])
    assert f"{flag} is a setting of --backbone" in str(refused.value) and backbone in str(refused.value)


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
