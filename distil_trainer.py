"""DistilTrainer: TRL's SDFT trainer with the CaOPD step wired in after the rollouts.

Per generation batch: verify every rollout -> share verdicts across processes -> P_acc per prompt over all
its K rollouts -> rewrite the student completion ids and the teacher context (``caopd.targets``) -> TRL builds
the teacher inputs and computes the distillation loss as usual. The EMA teacher goes into every checkpoint and
comes back on resume (``caopd.teacher``); ``--save_rollouts`` logs every rollout (``caopd.rollout_log``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from accelerate.utils import gather_object, is_peft_model
from datasets import Dataset
from trl.experimental.sdft import SDFTTrainer
from trl.experimental.sdft.teacher_sync import PEFTAdapterEMACallback, SyncTeacherModelCallback
from trl.trainer.utils import entropy_from_logits, pad

from caopd.checkpoints import CompleteCheckpoints
from caopd.confidence import parse_confidence
from caopd.groups import RolloutRecord, local_records, step_statistics, success_rates, teacher_references
from caopd.prompts import end_of_turn_token
from caopd.rollout_log import RolloutLog, RolloutLogTrimCallback, rollout_rows
from caopd.self_consistency import teacher_anchored_references
from caopd.shared_prefix import shared_prefix_logits
from caopd.targets import reserved_completion_tokens, rewrite_completion_ids, teacher_context
from caopd.tasks.base import Task
from caopd.tasks.custom import resolve_equivalence
from caopd.teacher import (
    TEACHER_DIR,
    FP32AdapterEMA,
    FP32TeacherEMA,
    TeacherRestoreCallback,
    copy_of_student,
    drop_recreated_teacher_adapter,
    save_teacher,
)
from distil_config import DistilConfig


def add_trainer_columns(dataset: Dataset, mode: str, instruction: str | None = None) -> Dataset:
    """Add the prompt id (groups rollouts across processes) and TRL's ``privileged_context`` column."""

    def columns(row: dict[str, Any], index: int) -> dict[str, Any]:
        context = teacher_context(mode, row["demonstration"], None, instruction)
        return {"prompt_uid": index, "privileged_context": context}

    return dataset.map(columns, with_indices=True, desc="Teacher contexts")


class DistilTrainer(CompleteCheckpoints, SDFTTrainer):
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
        self._equivalent = resolve_equivalence(args.equivalence, task) if args.self_consistency else None
        self.rollout_log = RolloutLog(args.output_dir, self.accelerator.process_index)
        self.add_callback(TeacherRestoreCallback(self))
        if args.save_rollouts:
            self.add_callback(RolloutLogTrimCallback(self.rollout_log))
        self.end_of_turn_id = end_of_turn_token(self._tokenizer, self.eos_token_ids)
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
        """TRL's teacher, built from the in-memory student where possible, and an EMA averaged in fp32.

        TRL re-loads a separate teacher from ``config._name_or_path``, which fails for a model built in memory; a
        copy of the student needs no path. Under ZeRO-3 the student is already sharded and cannot be copied, so
        TRL's construction stays. TRL's EMA callbacks update the teacher in its own dtype (in bf16 most updates
        round away); they are swapped for ones that average in fp32 (``caopd.teacher``).
        """
        kind = self.args.teacher_model_kind
        plugin = self.accelerator.state.deepspeed_plugin
        zero3 = self.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3
        if kind in ("base", "ema") and not is_peft_model(self.model) and not zero3:
            self.teacher_model = copy_of_student(self.accelerator, self.model)
        else:
            super()._setup_teacher_model()
        self.ema = None
        if kind != "ema":
            return
        rate = self.args.teacher_update_rate
        if self._use_peft_ema_teacher_adapter():
            self.remove_callback(PEFTAdapterEMACallback)
            sync_steps = self.args.teacher_sync_steps
            self.ema = FP32AdapterEMA(self.model, TEACHER_DIR, rate, sync_steps, accelerator=self.accelerator)
        else:
            self.remove_callback(SyncTeacherModelCallback)
            self.ema = FP32TeacherEMA(self.model, self.teacher_model, self.accelerator, rate)
        self.add_callback(self.ema)

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

        sampled = self._get_completion_ids_list(batch)
        rollouts = [self._strip_eos(ids) for ids in sampled]
        texts = [self._decode(ids) for ids in rollouts]
        records = self._share_records(inputs, texts)
        rates = success_rates(records)
        rank, uids = self.accelerator.process_index, [example["prompt_uid"] for example in inputs]
        p_acc = [rates[uid] for uid in uids]

        calibrate, mode_name = self.args.empirical_calibration, self.args.teacher_context_mode
        demonstrations = [example["demonstration"] for example in inputs]
        references, fallbacks = teacher_references(demonstrations, uids, records, rank, mode_name)
        contexts = [
            teacher_context(mode_name, reference, p if calibrate else None, self.args.teacher_instruction)
            for reference, p in zip(references, p_acc, strict=True)
        ]
        if calibrate:
            stops = [self._stop_token(ids) for ids in sampled]
            self._replace_completions(batch, rollouts, p_acc, stops)

        with self._prompt_limit(self.args.max_teacher_prompt_length):
            teacher_batch = self.teacher_context_builder.build(
                [example["prompt"] for example in inputs], contexts, batch["completion_ids"], batch["completion_mask"]
            )
        batch.update(teacher_batch)

        self._record_caopd_metrics(mode, records, rates, fallbacks, batch)
        if self.args.save_rollouts and mode == "train":
            own = [record for record in records if record.rank == rank]
            self.rollout_log.append(rollout_rows(self.state.global_step, uids, texts, own, p_acc, contexts, calibrate))
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

    def _stop_token(self, ids: list[int]) -> int:
        """The stop token a rollout ended with; the template's end-of-turn token for one the length limit cut."""
        return ids[-1] if ids and ids[-1] in self.eos_token_ids else self.end_of_turn_id

    def _share_records(self, inputs: list[dict[str, Any]], texts: list[str]) -> list[RolloutRecord]:
        """Verify the local rollouts and gather every process's verdicts (all processes get the same list)."""
        judge = self._self_consistency_judge(inputs) if self.args.self_consistency else None
        verdicts = [
            judge(example, text) if judge else self.task.verify(text, example["ground_truth"])
            for example, text in zip(inputs, texts, strict=True)
        ]
        keep_solutions = self.args.teacher_context_mode == "correct_solution"
        uids = [example["prompt_uid"] for example in inputs]
        local = local_records(uids, texts, verdicts, self.accelerator.process_index, keep_solutions)
        return gather_object(local) if self.accelerator.num_processes > 1 else local

    def _self_consistency_judge(self, inputs: list[dict[str, Any]]):
        """Teacher-anchored self-consistency: a rollout is "correct" when it is equivalent to its prompt's reference."""
        references = self._self_consistency_references(inputs)
        return lambda example, text: bool(self._equivalent(text, references[example["prompt_uid"]]))

    def _self_consistency_references(self, inputs: list[dict[str, Any]]) -> dict[int, str]:
        references = teacher_anchored_references(self, inputs)
        self._metrics["train" if self.model.training else "eval"]["caopd/reference_confidence_format"].append(
            sum(parse_confidence(r) is not None for r in references.values()) / len(references)
        )
        return references

    def _replace_completions(
        self, batch: dict[str, Any], rollouts: list[list[int]], p_acc: list[float], stops: list[int]
    ) -> None:
        """Swap in the rewritten completion ids and rebuild everything derived from them.

        Each target ends with the stop token its rollout ended with (a model may stop on several, and its
        tokenizer's EOS need not be among them); a rollout cut by the length limit ends with the chat template's
        end-of-turn token, as the confidence line closes the response.
        """
        targets = [
            rewrite_completion_ids(ids, p, self._decode, self._encode, stop)
            for ids, p, stop in zip(rollouts, p_acc, stops, strict=True)
        ]
        device, tensors = batch["completion_ids"].device, [torch.tensor(ids, dtype=torch.long) for ids in targets]
        batch["completion_ids"] = pad(tensors, self._tokenizer.pad_token_id, padding_side="right").to(device)
        batch["completion_mask"] = pad([torch.ones_like(t) for t in tensors], 0, padding_side="right").to(device)
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
        metrics = self._metrics[mode]
        for key, value in step_statistics(records, rates).items():
            metrics[key].append(value)
        total_fallbacks = self.accelerator.reduce(torch.tensor(float(fallbacks), device=self.accelerator.device))
        metrics["caopd/solution_fallbacks"].append(total_fallbacks.item())
        completion_length = batch["completion_ids"].size(1)
        teacher_prompt_lengths = batch["teacher_attention_mask"][:, :-completion_length].sum(dim=1)
        limit = self.args.max_teacher_prompt_length
        truncated = (teacher_prompt_lengths >= limit).float().mean() if limit else teacher_prompt_lengths.new_zeros(())
        metrics["caopd/teacher_prompt_truncated"].append(self.accelerator.gather(truncated.reshape(1)).mean().item())

    def shared_prefix_mode(self) -> str:
        """Whether the shared-prefix forward runs, and why not when it does not (recorded in the run config).
        DeepSpeed and FSDP may come from the accelerate config, which only the trainer sees."""
        mode = self.args.shared_prefix_mode()
        if mode == "on" and self.is_deepspeed_enabled:
            return "off (DeepSpeed: not yet tested)"
        if mode == "on" and self.is_fsdp_enabled:
            return "off (FSDP: not yet tested)"
        return mode

    def _forward_logits(self, model, input_ids, attention_mask, logits_to_keep):
        """TRL's forward for the student and the teacher, with each distinct prompt computed once where that is on
        (``caopd.shared_prefix``: same logits, loss and gradients)."""
        if self.shared_prefix_mode() == "on":
            logits = shared_prefix_logits(
                model, input_ids, attention_mask, logits_to_keep, "logits_to_keep" in self.model_kwarg_keys
            )
            if logits is not None:
                return logits / self.temperature
        return super()._forward_logits(model, input_ids, attention_mask, logits_to_keep)

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

    # --------------------------------------------------------------------------------------------- checkpoints
    def _save_extra(self, checkpoint: str) -> None:
        """The EMA teacher and its fp32 shadow, inside the checkpoint before its completion marker."""
        if self.ema is not None:
            separate = self.teacher_model if self.teacher_model is not self.model else None
            save_teacher(self.accelerator, separate, self.ema, checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self._ema_adapter_callback():
            drop_recreated_teacher_adapter(self.accelerator.unwrap_model(self.model))

    def _ema_adapter_callback(self) -> PEFTAdapterEMACallback | None:
        """TRL's EMA callback of a LoRA teacher adapter, when this run has one."""
        return next((c for c in self.callback_handler.callbacks if isinstance(c, PEFTAdapterEMACallback)), None)
