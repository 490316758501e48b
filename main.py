"""CaOPD training CLI: ``accelerate launch main.py --output_dir DIR [flags]`` (``--help`` lists them).

flags (+ YAML) -> task (dataset, prompt format, verifier) -> model + tokenizer -> the backbone's config ->
its trainer (``--backbone``: DistilTrainer on SDFT, SDPODistilTrainer on SDPO) .train() -> final model, tokenizer
and resolved config in --output_dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import shutil
import signal
import sys
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch
from huggingface_hub import upload_folder
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.integrations import get_available_reporting_integrations

from caopd.backends import check_vllm_server, resolve_bf16, resolve_use_vllm
from caopd.checkpoints import (
    checkpoint_damage,
    checkpoint_problem,
    checkpoint_step,
    latest_sound,
    sampling_divergence,
)
from caopd.checks import CLIError
from caopd.cli import BACKBONE_CONFIGS, parse_args
from caopd.flag_validation import gradient_accumulation_steps, setting_warnings
from caopd.held_out import HeldOutHistory, held_out_questions, held_out_rows
from caopd.last_line import end_with
from caopd.launch import PEER_LOST_EXIT
from caopd.model_card import method_name
from caopd.models import ModelResolutionError, resolve_model_name
from caopd.prompt_lengths import check_prompt_lengths
from caopd.prompts import encode_chat_prompts, thinking_mode
from caopd.rewards import RLCR_CONFIG
from caopd.run_arguments import BACKBONES as BACKBONE_NAMES
from caopd.run_config import RUN_CONFIG_NAME, resolved_config, write_yaml_atomically
from caopd.run_guard import (
    HOLDER_NAME,
    LOCK_NAME,
    STOP_SIGNALS,
    RunLock,
    disk_full,
    identity_problem,
    ignore_further_interrupts,
    peer_lost,
    run_identity,
    signal_handlers_kept,
    stopped_line,
    where_to_resume,
)
from caopd.tasks import get_task
from caopd.tasks.base import require_chat_prompts
from caopd.tasks.custom import resolve_equivalence
from caopd.teacher import TEACHER_DIR
from caopd.user_errors import USER_ERRORS
from distil_config import teacher_prompt_limit, vllm_context_length
from distil_trainer import DistilTrainer
from grpo_trainer import RLTrainer
from sdpo_trainer import SDPODistilTrainer

TRAINERS = {"sdft": DistilTrainer, "sdpo": SDPODistilTrainer, "grpo": RLTrainer}
BACKBONES = {name: (BACKBONE_CONFIGS[name], trainer) for name, trainer in TRAINERS.items()}  # (config, trainer)


def resolve_report_to(args: argparse.Namespace) -> str | list[str]:
    """``--no_wandb``: none. ``--report_to`` given: as given (``a,b`` is two integrations), each checked. Unset:
    wandb (the original release's tracker) when it is installed, else none, said in one line rather than refused."""
    if args.no_wandb:
        return "none"
    if args.report_to is not None:
        check_reporting(args.report_to)
        return [name.strip() for name in args.report_to.split(",") if name.strip()] or "none"
    if "wandb" in get_available_reporting_integrations():
        return "wandb"
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            "note: wandb is not installed, so this run reports to no tracker (pip install wandb, or pass --report_to "
            "tensorboard or another integration)",
            file=sys.stderr,
        )
    return "none"


def check_reporting(report_to: str) -> None:
    """Every ``--report_to`` integration is one transformers knows and whose package is installed."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in (part.strip() for part in report_to.split(",") if part.strip() not in ("none", "all", "")):
        if name not in INTEGRATION_TO_CALLBACK:
            raise CLIError(f"--report_to {name}: not an integration; choose from {', '.join(INTEGRATION_TO_CALLBACK)}")
        if name not in get_available_reporting_integrations():
            raise CLIError(
                f"reporting to {name} needs its package (pip install {name}); or pass --report_to none"
                + (" (or --no_wandb)" if name == "wandb" else "")
            )


def build_config(args: argparse.Namespace, world_size: int):
    """The backbone's config from the flags (each of its fields is one), with what this CLI decides itself: the
    question batch fixes gradient accumulation; the device, bf16, vLLM and the tracker are resolved here."""
    config_class = BACKBONES[args.backbone][0]
    settings = {
        spec.name: getattr(args, spec.name)
        for spec in dataclasses.fields(config_class)
        if spec.init and hasattr(args, spec.name)
    }
    on_gpu = torch.cuda.is_available()
    settings.update(
        gradient_accumulation_steps=gradient_accumulation_steps(args, world_size),
        use_cpu=not on_gpu,
        bf16=resolve_bf16(args.bf16, on_gpu),
        use_vllm=resolve_use_vllm(args.use_vllm),
        report_to=resolve_report_to(args),
    )
    settings.update(
        {name: value for name, value in _rl_reward_defaults(args).items() if name not in args.given_settings}
    )
    try:
        return config_class(**settings)
    except ValueError as err:
        raise CLIError(str(err)) from err


def _rl_reward_defaults(args: argparse.Namespace) -> dict:
    """RLCR's configuration for its gated rewards (rlcr, car): rewards not rescaled, unless the flags say otherwise."""
    return RLCR_CONFIG if args.backbone == "grpo" and args.rl_reward in ("rlcr", "car") else {}


def load_model_and_tokenizer(name: str, bf16: bool, attention: str = "sdpa"):
    """Resolve --model_name (hub id, folder or the embedded model) and load it with its tokenizer."""
    location = resolve_model_name(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, padding_side="left", truncation_side="left")
        dtype = torch.bfloat16 if bf16 else torch.float32
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, attn_implementation=attention)
    except OSError as err:
        raise ModelResolutionError(
            f"cannot load model {name!r}: {err}. Without network access use a local folder or 'smollm2'."
        ) from err
    except (ImportError, ValueError) as err:  # an attention kernel that is not installed or not supported
        raise ModelResolutionError(
            f"--attn_implementation {attention}: {str(err).splitlines()[0].rstrip('.')}; choose sdpa (the default)"
        ) from err
    if tokenizer.chat_template is None:
        raise ModelResolutionError(f"{name}: the tokenizer has no chat template; CaOPD prompts are chat prompts")
    return model, tokenizer


def peft_config(args: argparse.Namespace):
    """LoRA from TRL's ModelConfig flags; every linear layer unless --lora_target_modules names others."""
    if not args.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=args.lora_target_modules or "all-linear",
        modules_to_save=args.lora_modules_to_save,
        use_rslora=args.use_rslora,
        use_dora=args.use_dora,
        task_type="CAUSAL_LM",
    )


def resume_argument(args: argparse.Namespace, identity: dict | None = None) -> str | None:
    """The checkpoint to resume from, checked complete before anything is loaded (``caopd.checkpoints``)."""
    value = args.resume_from_checkpoint
    if value is None:
        _start_over_in(args.output_dir, args.overwrite_output_dir)
        return None
    if value == "latest":
        latest, passed = latest_sound(args.output_dir)
        if passed and int(os.environ.get("RANK", "0")) == 0:
            for folder, reason in passed:
                print(f"warning: --resume_from_checkpoint latest passes over {folder.name}: {reason}", file=sys.stderr)
        if latest is None:
            found = f" ({len(passed)} incomplete or damaged)" if passed else ""
            raise CLIError(
                f"--resume_from_checkpoint latest: no complete checkpoint-* folder in {args.output_dir}{found}"
            )
        value = str(latest)
    problem = checkpoint_problem(value) or checkpoint_damage(value)
    if problem:
        raise CLIError(
            f"--resume_from_checkpoint {value}: cannot resume from it: {problem}; resume from an earlier checkpoint "
            "(--resume_from_checkpoint latest picks the newest complete one) or start a new run"
        )
    if args.backbone != "grpo" and args.teacher_model_kind == "ema" and not (Path(value) / TEACHER_DIR).is_dir():
        raise CLIError(
            f"--resume_from_checkpoint {value}: it holds no EMA teacher ({TEACHER_DIR}/), so resuming would restart "
            "the teacher from the base weights; resume from a checkpoint written by this CLI or start a new run"
        )
    if identity is not None:
        problem, warning = identity_problem(value, identity)
        if problem:
            raise CLIError(f"--resume_from_checkpoint: {problem}")
        if warning and int(os.environ.get("RANK", "0")) == 0:
            print(f"warning: {warning}", file=sys.stderr)
    return value


def _earlier_checkpoints(output_dir: str) -> list[str]:
    return sorted(path.name for path in Path(output_dir).glob("checkpoint-*") if checkpoint_step(path) is not None)


def _start_over_in(output_dir: str, overwrite: bool) -> None:
    """A new run writes only into a folder that is empty or an earlier run's of this CLI (its run config says so):
    the final model's names (config.json, adapter/, ...) would replace a user's own files. It never mixes with an
    earlier run's checkpoints either: refused unless --overwrite_output_dir."""
    folder = Path(output_dir)
    if folder.is_dir() and not (folder / RUN_CONFIG_NAME).is_file():
        foreign = sorted(path.name for path in folder.iterdir() if path.name not in (LOCK_NAME, HOLDER_NAME))
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise CLIError(
                f"--output_dir {output_dir} holds files this CLI did not write ({shown}); a run would replace files "
                "of the same names. Choose an empty or new --output_dir"
            )
    earlier = _earlier_checkpoints(output_dir)
    if earlier and not overwrite:
        raise CLIError(
            f"--output_dir {output_dir} already holds checkpoints ({', '.join(earlier[-3:])}): resume with "
            "--resume_from_checkpoint latest, choose another --output_dir, or pass --overwrite_output_dir to start over"
        )


def delete_checkpoints(output_dir: str) -> None:
    """--overwrite_output_dir: the earlier run's checkpoints go, once everything else of this run has been checked."""
    earlier = _earlier_checkpoints(output_dir)
    if earlier and int(os.environ.get("RANK", "0")) == 0:
        print(f"warning: --overwrite_output_dir deletes {', '.join(earlier)} in {output_dir}", file=sys.stderr)
        for name in earlier:
            shutil.rmtree(Path(output_dir) / name)


FINAL_STAGING = ".final.partial"


def save_final_model(trainer, tokenizer, output_dir: str) -> None:
    """Write a model that plain ``AutoModelForCausalLM.from_pretrained(output_dir)`` loads (LoRA: merged).

    Everything is written into a staging folder first and moved into ``output_dir`` once complete, its config last:
    a save cut short (a full disk, a kill) never leaves a folder that looks like a model without its weights or
    tokenizer.
    """
    staging = Path(output_dir) / FINAL_STAGING
    if trainer.accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    try:
        _write_final_model(trainer, tokenizer, staging)
    except BaseException:
        if trainer.accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)  # a full disk: free what the cut-short save took
        raise
    if trainer.accelerator.is_main_process:
        names = sorted(path.name for path in staging.iterdir())
        for name in sorted(names, key=lambda name: name == "config.json"):  # the config last
            target = Path(output_dir) / name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(staging / name, target)
        staging.rmdir()
    trainer.accelerator.wait_for_everyone()


def _write_final_model(trainer, tokenizer, folder: Path) -> None:
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not hasattr(model, "merge_and_unload"):
        # not pushed from here (the Trainer would push its output folder): publish_final_model pushes it, complete
        trainer.save_model(str(folder), _internal_call=True)
    elif trainer.accelerator.is_main_process:
        model.save_pretrained(folder / "adapter", selected_adapters=["default"])
        if "teacher" in model.peft_config:
            model.delete_adapter("teacher")
        model.merge_and_unload().save_pretrained(folder)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(folder)


def card_settings(args: argparse.Namespace, base_model: str, held_out) -> dict:
    """What the model card says this run was (``caopd.model_card``)."""
    settings = {
        "method": method_name(
            args.backbone, getattr(args, "empirical_calibration", False), getattr(args, "rl_reward", None)
        ),
        "backbone": BACKBONE_NAMES[args.backbone],
        "task": args.dataset_name + (f" ({args.train_data})" if args.train_data else ""),
        "base model": base_model,
        "rollouts per question (K)": args.num_generations,
        "questions per step": args.num_prompts_per_batch,
        "learning rate": args.learning_rate,
        "optimizer steps": args.max_steps if args.max_steps > 0 else f"{args.num_train_epochs} epoch(s)",
        "completion tokens at most": args.max_completion_length,
        "LoRA": f"r {args.lora_r}, alpha {args.lora_alpha}" if args.use_peft else "no (full fine-tuning)",
        "seed": args.seed,
    }
    if args.backbone != "grpo":
        settings["teacher"] = f"{args.teacher_model_kind} (EMA rate {args.teacher_update_rate})"
    if held_out is not None:
        settings["held-out questions"] = f"{len(held_out.rows)}, {held_out.samples} answer(s) each"
    return settings


def publish_final_model(trainer, args: argparse.Namespace) -> None:
    """The final folder's model card, as TRL's trainers write it; with ``--push_to_hub``, the folder (final model,
    tokenizer, card, curve; no checkpoints) uploaded to the Trainer's repository through huggingface_hub."""
    trainer.create_model_card(model_name=Path(args.output_dir).name, dataset_name=args.dataset_name)
    if args.push_to_hub and trainer.accelerator.is_main_process:
        upload_folder(
            repo_id=trainer.hub_model_id,
            folder_path=args.output_dir,
            commit_message="End of training",
            ignore_patterns=["checkpoint-*", ".*", "rollouts/*"],  # fnmatch: * also matches across folders
        )
    trainer.accelerator.wait_for_everyone()


def run(args: argparse.Namespace, progress: dict) -> None:
    """Train as the flags say, holding the output folder's lock; ``progress["trainer"]`` holds the trainer once it
    exists (for the line a stopped run ends with)."""
    lock = RunLock(args.output_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        lock.acquire()  # before anything is read or written there
    try:
        train(args, progress)
    finally:
        lock.release()


def train(args: argparse.Namespace, progress: dict) -> None:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    config = build_config(args, world_size)
    if int(os.environ.get("RANK", "0")) == 0:
        for warning in setting_warnings(args, bool(getattr(config, "use_vllm", False))):
            print(f"warning: {warning}", file=sys.stderr)
    if getattr(config, "use_vllm", False) and args.vllm_mode == "server" and int(os.environ.get("RANK", "0")) == 0:
        check_vllm_server(args.vllm_server_host, args.vllm_server_port, args.vllm_server_timeout)  # TRL's main process
    identity = run_identity(args, resolve_model_name(args.model_name_or_path))
    resume = resume_argument(args, identity)
    task = get_task(args.dataset_name, args.verifier, args.tooluse_match)
    dataset = task.load(args.train_data)
    require_chat_prompts(dataset, args.train_data or f"--dataset_name {args.dataset_name}")
    task.probe(dataset)
    eval_rows = None
    if args.eval_strategy != "no":
        generated = args.dataset_name == "arithmetic" and args.train_data is None
        dataset, eval_rows, eval_source = held_out_rows(
            task, dataset, args.eval_data, args.eval_split_size, generated, args.seed
        )
    if getattr(args, "self_consistency", False):
        example = dataset[0]["demonstration"]
        if not resolve_equivalence(args.equivalence, task)(example, example):  # a broken --equivalence fails here
            raise CLIError(
                f"--equivalence {args.equivalence} finds the first row's demonstration not equivalent to itself, so "
                "no rollout could ever match its reference (P_acc 0 throughout); choose another --equivalence"
            )
    model, tokenizer = load_model_and_tokenizer(args.model_name_or_path, config.bf16, args.attn_implementation)
    lengths = [len(ids) for ids in encode_chat_prompts(tokenizer, list(dataset["prompt"]), args.enable_thinking)]
    check = check_prompt_lengths(lengths, args.max_prompt_length, args.overlong_prompts, "--max_prompt_length")
    if check.warning and int(os.environ.get("RANK", "0")) == 0:
        print(f"warning: {check.warning}", file=sys.stderr)
    dataset = dataset.select(check.keep)
    held_out = None
    if eval_rows is not None:
        held_out, warning = held_out_questions(
            task, eval_rows, tokenizer, args, args.num_generations_eval, args.per_device_eval_batch_size
        )
        if warning and int(os.environ.get("RANK", "0")) == 0:
            print(f"warning: {warning}", file=sys.stderr)
    try:
        trainer = BACKBONES[args.backbone][1](
            model=model,
            args=config,
            train_dataset=dataset,
            task=task,
            processing_class=tokenizer,
            peft_config=peft_config(args),
            held_out=held_out,
        )
    except ValueError as err:  # settings that only the trainer can check (e.g. room for the confidence line)
        raise CLIError(str(err)) from err
    try:  # the optimizer the Trainer builds as training starts: a missing package or bad --optim_args, now
        trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
    except (ImportError, ValueError) as err:
        raise CLIError(f"--optim {args.optim}: {err}") from err
    if held_out is not None:
        trainer.add_callback(HeldOutHistory(args.output_dir))
    if trainer.accelerator.is_main_process:
        derived = {
            "model_path": model.config._name_or_path,
            "world_size": world_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "rollouts_per_step": args.num_prompts_per_batch * args.num_generations,
            "train_rows": len(dataset),
            "longest_prompt_tokens": max(lengths),
            "prompts_dropped": len(lengths) - len(check.keep),
            "prompts_truncated": len(check.truncated),
            "thinking": thinking_mode(tokenizer, args.enable_thinking),
            "shared_prefix": trainer.shared_prefix_mode(),
            "chunked_loss": trainer.loss_chunking_mode(),
            "held_out": f"{eval_source}; {len(held_out.rows)} within the prompt limit" if held_out else "none",
        }
        write_yaml_atomically(resolved_config(args, derived, config.to_dict()), Path(args.output_dir) / RUN_CONFIG_NAME)
    trainer.run_identity = identity
    location = model.config._name_or_path
    name = args.model_name_or_path
    base = name if name == location else f"{name} ({location})"
    trainer.card_settings = card_settings(args, base, held_out)
    progress["trainer"] = trainer
    if resume is None and args.overwrite_output_dir:
        delete_checkpoints(args.output_dir)
    trainer.train(resume_from_checkpoint=resume)
    save_final_model(trainer, tokenizer, args.output_dir)
    publish_final_model(trainer, args)
    # Tear the process group down before the interpreter exits: left to exit-time destructors, gloo's worker
    # threads can abort a finished run ("terminate called without an active exception", exit code -6).
    trainer.accelerator.end_training()


def vllm_max_model_len(args: argparse.Namespace) -> int:
    """The context vLLM needs for these flags, computed as the trainer computes it (``distil_config``)."""
    requested = getattr(args, "max_teacher_prompt_length", None)  # GRPO: no teacher
    teacher = teacher_prompt_limit(args.max_prompt_length, args.max_completion_length, requested)
    consistency = getattr(args, "self_consistency", False)
    return vllm_context_length(args.max_prompt_length, args.max_completion_length, teacher, consistency)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _step(progress: dict) -> int | None:
    trainer = progress.get("trainer")
    return trainer.state.global_step if trainer is not None else None


def main(argv: list[str] | None = None) -> int:
    """Train; every stop ends in one line. The signal handlers in force before are back when it returns."""
    with signal_handlers_kept():
        return _train_and_report(argv)


def _train_and_report(argv: list[str] | None) -> int:
    message, code, progress, args = None, 2, {}, None
    for signum in STOP_SIGNALS:  # a scheduler's stop, a closed terminal: the same clean line as Ctrl-C
        signal.signal(signum, _raise_interrupt)
    try:
        args = parse_args(argv)
        if args.print_vllm_max_model_len:
            print(vllm_max_model_len(args))
            return 0
        run(args, progress)
    except USER_ERRORS as err:
        message = f"error: {err}"
    except KeyboardInterrupt as interrupt:
        ignore_further_interrupts()
        cause = str(interrupt) or "SIGINT"
        code = 128 + getattr(signal.Signals, cause, signal.SIGINT).value
        message = stopped_line(cause, _step(progress), args.output_dir) if args else f"stopped by {cause}"
    except Exception as err:
        diverged = sampling_divergence(err, _step(progress), args.output_dir) if args else None
        if diverged:
            message = f"error: {diverged}"
        elif peer_lost(err) and args is not None:
            ignore_further_interrupts()  # the launcher is stopping this process too
            message = stopped_line("the loss of another process of this run", _step(progress), args.output_dir)
            code = PEER_LOST_EXIT
        elif disk_full(err) and args is not None:
            message = f"error: the disk is full ({err}); free some space, then {where_to_resume(args.output_dir)}"
        else:
            raise
    # The trainer sits in reference cycles, so its DDP wrapper (which holds the gloo process group) would otherwise
    # outlive run() until interpreter shutdown, where destroying gloo's pending work can abort the finished process
    # (SIGABRT, "terminate called without an active exception"). Collect it while the interpreter is whole, and
    # before the error line, which must stay the last one (an interrupted progress bar prints when collected).
    progress.clear()
    gc.collect()
    if message is not None:
        end_with(message)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
