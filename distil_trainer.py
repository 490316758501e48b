"""DistilTrainer: TRL's SDFT trainer with the CaOPD step wired in after the rollouts.

Per generation batch: verify every rollout -> share verdicts across processes -> P_acc per prompt over all
its K rollouts -> rewrite the student completion ids and the teacher context (``caopd.targets``) -> TRL builds
the teacher inputs and computes the distillation loss as usual. The trainer also keeps the EMA teacher in
every checkpoint and restores it on resume.
"""

from __future__ import annotations

import copy
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate.utils import gather_object, is_peft_model
from datasets import Dataset
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl.experimental.sdft import SDFTTrainer
from trl.experimental.sdft.teacher_sync import PEFTAdapterEMACallback, SyncTeacherModelCallback
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.trainer.utils import entropy_from_logits, pad

from caopd.atomic import write_text_atomically
from caopd.groups import RolloutRecord, peer_solution, success_rates
from caopd.targets import (
    reserved_completion_tokens,
    rewrite_completion_ids,
    rewrite_completion_text,
    teacher_context,
)
from caopd.tasks.base import Task
from caopd.tasks.custom import resolve_equivalence
from distil_config import DistilConfig
from eval.confidence import parse_confidence

TEACHER_DIR = "teacher"  # inside each checkpoint: the EMA teacher (full model) or the teacher LoRA adapter


def add_trainer_columns(dataset: Dataset, mode: str, instruction: str | None = None) -> Dataset:
    """Add the prompt id (groups rollouts across processes) and TRL's ``privileged_context`` column."""

    def columns(row: dict[str, Any], index: int) -> dict[str, Any]:
        context = teacher_context(mode, row["demonstration"], None, instruction)
        return {"prompt_uid": index, "privileged_context": context}

    return dataset.map(columns, with_indices=True, desc="Teacher contexts")


class DistilTrainer(SDFTTrainer):
    """On-policy self-distillation with CaOPD's empirical-confidence targets."""

    _tag_names: ClassVar[list[str]] = ["trl", "sdft", "caopd"]
    _name = "CaOPD"
    config_cls = DistilConfig

    def __init__(self, model, args: DistilConfig, train_dataset: Dataset, task: Task, processing_class, **kwargs):
        self.task = task
        super().__init__(
            model=model,
            args=args,
            train_dataset=add_trainer_columns(train_dataset, args.teacher_context_mode, args.teacher_instruction),
            processing_class=processing_class,
            **kwargs,
        )
        self._resume_dir: str | None = None
        self._equivalent = resolve_equivalence(args.equivalence) if args.self_consistency else None
        self.add_callback(_TeacherRestoreCallback(self))
        if args.save_rollouts:
            self.add_callback(_RolloutLogTrimCallback(self))
        if args.empirical_calibration:
            self._reserve_room_for_confidence()

    # ----------------------------------------------------------------------------------------------- generation
    def _encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False)

    def _decode(self, ids) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    def _reserve_room_for_confidence(self) -> None:
        """Sample at most max_completion_length - r tokens, so the appended confidence line + EOS always fit."""
        reserve = reserved_completion_tokens(self._encode)
        limit = self.max_completion_length - reserve
        if limit < 1:
            raise ValueError(
                f"max_completion_length={self.max_completion_length} leaves no room for rollouts: CaOPD appends "
                f"'Confidence: x.xx' + EOS ({reserve} tokens). Raise --max_completion_length."
            )
        self.generation_config.max_new_tokens = limit
        if self.use_vllm:
            self.vllm_generation.max_completion_length = limit

    # ------------------------------------------------------------------------------------------------- teacher
    def _setup_teacher_model(self) -> None:
        """Build a separate teacher from the in-memory student, so it needs no loadable path.

        TRL re-loads it from ``config._name_or_path``; that fails for a model built in memory. Under ZeRO-3 the
        student is already sharded and cannot be copied, so TRL's path-based construction is kept there.
        """
        kind = self.args.teacher_model_kind
        needs_copy = kind in ("base", "ema") and not is_peft_model(self.model)
        if not needs_copy or self._is_zero3():
            super()._setup_teacher_model()
            return
        teacher = copy.deepcopy(self.accelerator.unwrap_model(self.model))
        teacher.requires_grad_(False)
        teacher.eval()
        if self.is_deepspeed_enabled:
            teacher = prepare_deepspeed(teacher, self.accelerator)
        elif self.is_fsdp_enabled:
            teacher = prepare_fsdp(teacher, self.accelerator)
        else:
            teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        self.teacher_model = teacher
        if kind == "ema":
            self.add_callback(SyncTeacherModelCallback(teacher_model=teacher, accelerator=self.accelerator))

    def _is_zero3(self) -> bool:
        plugin = self.accelerator.state.deepspeed_plugin
        return bool(self.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3)

    @contextmanager
    def _prompt_limit(self, limit: int | None):
        """TRL truncates every prompt to max_prompt_length; teacher prompts get their own, longer limit."""
        saved, self.max_prompt_length = self.max_prompt_length, limit
        try:
            yield
        finally:
            self.max_prompt_length = saved

    # ------------------------------------------------------------------------------------------------ the step
    def _prepare_training_batch(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """Rollouts -> verdicts -> P_acc over all K rollouts of each prompt -> rewritten targets -> teacher inputs."""
        batch = self.sample_rollouts(inputs)
        mode = "train" if self.model.training else "eval"
        self._record_completion_metrics(mode, batch)

        rollouts = [self._strip_eos(ids) for ids in self._get_completion_ids_list(batch)]
        texts = [self._decode(ids) for ids in rollouts]
        records = self._share_records(inputs, texts)
        rates = success_rates(records)
        rank = self.accelerator.process_index
        p_acc = [rates[example["prompt_uid"]] for example in inputs]

        calibrate = self.args.empirical_calibration
        references, fallbacks = [], 0
        for index, example in enumerate(inputs):
            reference = example["demonstration"]
            if self.args.teacher_context_mode == "correct_solution":
                solution = peer_solution(records, rank, index, example["prompt_uid"])
                fallbacks += solution is None
                reference = reference if solution is None else solution
            references.append(reference)
        contexts = [
            teacher_context(
                self.args.teacher_context_mode, reference, p if calibrate else None, self.args.teacher_instruction
            )
            for reference, p in zip(references, p_acc, strict=True)
        ]
        if calibrate:
            self._replace_completions(batch, rollouts, p_acc)

        with self._prompt_limit(self.args.max_teacher_prompt_length):
            teacher_batch = self.teacher_context_builder.build(
                [example["prompt"] for example in inputs], contexts, batch["completion_ids"], batch["completion_mask"]
            )
        batch.update(teacher_batch)

        self._record_caopd_metrics(mode, records, rates, fallbacks, batch)
        if self.args.save_rollouts and mode == "train":
            self._write_rollouts(inputs, texts, records, p_acc, contexts)
        self._dispatch_self_distillation_callback(
            "on_self_distillation_batch_prepared",
            old_per_token_logps=batch.get("old_per_token_logps"),
            prompt_ids=batch["prompt_ids"],
            completion_ids=batch["completion_ids"],
            teacher_input_ids=batch["teacher_input_ids"],
            teacher_attention_mask=batch["teacher_attention_mask"],
        )
        return batch

    def _strip_eos(self, ids: list[int]) -> list[int]:
        return ids[:-1] if ids and ids[-1] in self.eos_token_ids else ids

    def _share_records(self, inputs: list[dict[str, Any]], texts: list[str]) -> list[RolloutRecord]:
        """Verify the local rollouts and gather every process's verdicts (all processes get the same list)."""
        rank = self.accelerator.process_index
        keep_solutions = self.args.teacher_context_mode == "correct_solution"
        judge = self._self_consistency_judge(inputs) if self.args.self_consistency else None
        local = []
        for index, (example, text) in enumerate(zip(inputs, texts, strict=True)):
            correct = judge(example, text) if judge else self.task.verify(text, example["ground_truth"])
            local.append(
                RolloutRecord(
                    uid=example["prompt_uid"],
                    rank=rank,
                    index=index,
                    correct=correct,
                    confidence=parse_confidence(text),
                    solution=text if (correct and keep_solutions) else None,
                )
            )
        return gather_object(local) if self.accelerator.num_processes > 1 else local

    def _self_consistency_judge(self, inputs: list[dict[str, Any]]):
        """Teacher-anchored self-consistency: a rollout is "correct" when it is equivalent to its prompt's reference."""
        references = self._self_consistency_references(inputs)
        return lambda example, text: bool(self._equivalent(text, references[example["prompt_uid"]]))

    def _self_consistency_references(self, inputs: list[dict[str, Any]]) -> dict[int, str]:
        """One greedy reference per prompt id, from the policy model under the teacher context.

        The reference is the model's answer when prompted with the question and the golden demonstration. Greedy
        decoding (under vLLM too) makes it the same on every process holding rollouts of the prompt.
        """
        firsts = {example["prompt_uid"]: example for example in inputs}
        prompts = self.teacher_context_builder.select_generation_prompts(
            [e["prompt"] for e in firsts.values()], [e["privileged_context"] for e in firsts.values()]
        )
        with self._prompt_limit(self.args.max_teacher_prompt_length):
            prompt_ids = self._tokenize_prompts(prompts)
        reference_ids = self._generate_greedy(prompt_ids)
        references = {uid: self._decode(self._strip_eos(ids)) for uid, ids in zip(firsts, reference_ids, strict=True)}
        self._metrics["train" if self.model.training else "eval"]["caopd/reference_confidence_format"].append(
            sum(parse_confidence(r) is not None for r in references.values()) / len(references)
        )
        return references

    def _generate_greedy(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        """One greedy completion per prompt, on the rollout backend (transformers, or vLLM colocate / server)."""
        if not self.use_vllm:
            sampling, self.generation_config = self.generation_config, copy.copy(self.generation_config)
            self.generation_config.do_sample = False
            try:
                return self._generate(prompt_ids)[1]
            finally:
                self.generation_config = sampling
        # The rollouts of this step were generated just before, so the vLLM weights are already in sync.
        generation, count = self.vllm_generation, len(prompt_ids)
        if generation.mode == "server" and self.accelerator.num_processes > 1:
            # TRL's server path hands process r the results r*n .. (r+1)*n-1 of the gathered prompts: every
            # process must send the same number n, so shorter lists are padded with a repeat of their last prompt.
            most = max(gather_object([count]))
            prompt_ids = prompt_ids + [prompt_ids[-1]] * (most - count)
        sampling_temperature, generation.temperature = generation.temperature, 0.0  # vLLM: temperature 0 = greedy
        try:
            _, completion_ids, _, _ = generation.generate(prompts=prompt_ids, images=None, num_generations=1)
        finally:
            generation.temperature = sampling_temperature
        return [list(ids) for ids in completion_ids[:count]]

    def _replace_completions(self, batch: dict[str, Any], rollouts: list[list[int]], p_acc: list[float]) -> None:
        """Swap in the rewritten completion ids and rebuild everything derived from them."""
        eos = self._tokenizer.eos_token_id
        targets = [
            rewrite_completion_ids(ids, p, self._decode, self._encode, eos)
            for ids, p in zip(rollouts, p_acc, strict=True)
        ]
        device = batch["completion_ids"].device
        tensors = [torch.tensor(ids, dtype=torch.long) for ids in targets]
        batch["completion_ids"] = pad(tensors, padding_value=self._tokenizer.pad_token_id, padding_side="right").to(
            device
        )
        batch["completion_mask"] = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="right").to(
            device
        )
        batch["raw_completion_lengths"] = torch.tensor([len(ids) for ids in targets], device=device)

    def _compute_rollout_logps(self, **tensors) -> torch.Tensor | None:
        """Rollout log-probs, which TRL spends a forward pass on to correct for stale rollouts; none under CaOPD.

        CaOPD trains on rewritten completions whose last tokens were never sampled, so an importance-sampling
        correction against the sampler's log-probs has nothing valid to correct; the forward is skipped.
        """
        if self.args.empirical_calibration:
            return None
        return super()._compute_rollout_logps(**tensors)

    # ------------------------------------------------------------------------------------------------ logging
    def _record_caopd_metrics(self, mode, records, rates, fallbacks, batch) -> None:
        values = list(rates.values())
        metrics = self._metrics[mode]
        metrics["caopd/p_acc_mean"].append(sum(values) / len(values))
        metrics["caopd/p_acc_zero_share"].append(sum(v == 0.0 for v in values) / len(values))
        metrics["caopd/p_acc_one_share"].append(sum(v == 1.0 for v in values) / len(values))
        confidences = [r.confidence for r in records]
        metrics["caopd/confidence_format_rate"].append(sum(c is not None for c in confidences) / len(records))
        metrics["caopd/rollout_confidence_mean"].append(sum(c or 0.0 for c in confidences) / len(records))
        total_fallbacks = self.accelerator.reduce(torch.tensor(float(fallbacks), device=self.accelerator.device))
        metrics["caopd/solution_fallbacks"].append(total_fallbacks.item())
        completion_length = batch["completion_ids"].size(1)
        teacher_prompt_lengths = batch["teacher_attention_mask"][:, :-completion_length].sum(dim=1)
        limit = self.args.max_teacher_prompt_length
        truncated = (
            (teacher_prompt_lengths >= limit).float().mean()
            if limit
            else teacher_prompt_lengths.new_zeros((), dtype=torch.float)
        )
        metrics["caopd/teacher_prompt_truncated"].append(self.accelerator.gather(truncated.reshape(1)).mean().item())

    def _compute_self_distillation_loss(self, model, inputs, distillation_logits):
        """TRL's loss, plus the student's mean token entropy on the distilled tokens (a collapse early warning).

        TRL's ``entropy_from_logits`` works through the positions in chunks (fused on GPU), so the metric adds no
        full-vocabulary temporaries: at vocab 151,936 and 8,192 tokens one fp32 copy of the logits is 4.6 GiB.
        """
        with torch.no_grad():
            entropy = entropy_from_logits(distillation_logits.student_logits.detach())
            mask = distillation_logits.loss_mask
            mean_entropy = (entropy.float() * mask).sum() / mask.sum().clamp(min=1)
        mode = "train" if model.training else "eval"
        self._metrics[mode]["entropy"].append(self.accelerator.gather(mean_entropy.reshape(1)).mean().item())
        return super()._compute_self_distillation_loss(model, inputs, distillation_logits)

    def _rollout_log(self) -> Path:
        return Path(self.args.output_dir) / "rollouts" / f"rank{self.accelerator.process_index}.jsonl"

    def trim_rollout_log(self, start_step: int) -> None:
        """Drop this process's logged rollouts from ``start_step`` on, before training (re)starts there.

        The log is appended to step by step, so without this a fresh run in a used folder (start 0) would mix
        two runs, and a resumed one would log the steps after its checkpoint twice.
        """
        path = self._rollout_log()
        if not path.is_file():
            return
        kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _logged_step(line) < start_step]
        write_text_atomically(path, "".join(line + "\n" for line in kept))

    def _write_rollouts(self, inputs, texts, records, p_acc, contexts) -> None:
        rank = self.accelerator.process_index
        path = self._rollout_log()
        path.parent.mkdir(parents=True, exist_ok=True)
        local = [r for r in records if r.rank == rank]
        with open(path, "a", encoding="utf-8") as handle:
            for example, text, record, p, context in zip(inputs, texts, local, p_acc, contexts, strict=True):
                row = {
                    "step": self.state.global_step,
                    "uid": example["prompt_uid"],
                    "rank": rank,
                    "correct": record.correct,
                    "confidence": record.confidence,
                    "p_acc": p,
                    "completion": text,
                    "target": rewrite_completion_text(text, p) if self.args.empirical_calibration else text,
                    "teacher_context": context,
                }
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    # --------------------------------------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, model, trial) -> None:
        """Save the checkpoint as the Trainer does, plus the EMA teacher (a full model; LoRA teachers ride along)."""
        super()._save_checkpoint(model, trial)
        if self._teacher_is_separate_model():
            checkpoint = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            state_dict = self.accelerator.get_state_dict(self.teacher_model)
            if self.accelerator.is_main_process:
                teacher = self.accelerator.unwrap_model(self.teacher_model)
                teacher.save_pretrained(os.path.join(checkpoint, TEACHER_DIR), state_dict=state_dict)
            self.accelerator.wait_for_everyone()
        # A LoRA EMA teacher is the PEFT adapter named "teacher": PeftModel.save_pretrained already writes it to
        # checkpoint-N/teacher/ next to the student adapter.

    def _teacher_is_separate_model(self) -> bool:
        return self.args.teacher_model_kind == "ema" and self.teacher_model is not self.model

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
        self._resume_dir = resume_from_checkpoint or None
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        # The Trainer re-creates the saved "teacher" adapter; TRL's EMA callback then fails to add it again
        # ("Adapter with name 'teacher' already exists"). Drop it here; restore_teacher puts the weights back.
        unwrapped = self.accelerator.unwrap_model(self.model)
        if is_peft_model(unwrapped) and TEACHER_DIR in unwrapped.peft_config and self._ema_adapter_callback():
            unwrapped.delete_adapter(TEACHER_DIR)

    def _ema_adapter_callback(self) -> PEFTAdapterEMACallback | None:
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, PEFTAdapterEMACallback):
                return callback
        return None

    @torch.no_grad()
    def restore_teacher(self, checkpoint: str) -> None:
        """Load the EMA teacher saved in ``checkpoint`` (full model or LoRA adapter) into the live teacher."""
        directory = Path(checkpoint) / TEACHER_DIR
        if self.args.teacher_model_kind != "ema":
            return
        if not directory.is_dir():
            raise FileNotFoundError(
                f"{checkpoint} holds no EMA teacher ({TEACHER_DIR}/): it was not written by this trainer. Resuming "
                "from it would restart the teacher from the base weights; start a new run instead."
            )
        from safetensors.torch import load_file

        adapter_callback = self._ema_adapter_callback()
        if adapter_callback is not None:
            from peft import set_peft_model_state_dict

            weights = load_file(str(directory / "adapter_model.safetensors"))
            unwrapped = self.accelerator.unwrap_model(self.model)
            active = unwrapped.active_adapter
            set_peft_model_state_dict(unwrapped, weights, adapter_name=TEACHER_DIR)
            unwrapped.set_adapter(active)
            for key, value in adapter_callback.shadow_weights.items():
                value.copy_(weights[key].to(value.device, value.dtype))
            return
        teacher = self.accelerator.unwrap_model(self.teacher_model)
        state = {}
        for file in sorted(directory.glob("*.safetensors")):
            state.update(load_file(str(file)))
        missing, unexpected = teacher.load_state_dict(state, strict=False)
        parameters = dict(teacher.named_parameters())  # tied aliases (lm_head = embeddings) are not listed here
        missing = [key for key in missing if key in parameters]
        if missing or unexpected:
            raise ValueError(
                f"the teacher saved in {directory} does not match the model (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}): resume with the same --model_name and LoRA settings as the original run"
            )


def _logged_step(line: str) -> float:
    """The step of one rollout-log line; a line cut short by a killed run counts as never logged (infinite step)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


class _RolloutLogTrimCallback(TrainerCallback):
    """At train begin (after a resume has loaded its step), forget logged rollouts the run is about to redo."""

    def __init__(self, trainer: DistilTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.trim_rollout_log(state.global_step)


class _TeacherRestoreCallback(TrainerCallback):
    """Restores the EMA teacher on resume, after TRL's callbacks have set the teacher up at train begin."""

    def __init__(self, trainer: DistilTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer._resume_dir:
            self.trainer.restore_teacher(self.trainer._resume_dir)
