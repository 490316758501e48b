"""The CaOPD step, written once for every distillation backbone (TRL's SDFT and SDPO trainers).

A backbone trainer mixes ``CaOPDStep`` in before TRL's trainer class and, after its rollouts are sampled and judged,
calls the pieces here: share the verdicts across processes (``share_records``), P_acc per prompt over all its K
rollouts (``caopd.groups``), rewrite the student completions (``calibrate``: ``caopd.targets``), log the step
(``record_caopd_metrics``, ``--save_rollouts``). Where the backbone's teacher context is built differs (SDFT: the
golden demonstration or a peer solution; SDPO: TRL's successful-rollout reprompt), and stays in its own file.

Everything else a CaOPD run needs beside TRL's trainer is here too, so that both backbones have it:

- the confidence line always fits: rollouts are sampled ``reserved_completion_tokens`` short of the limit;
- a rewritten target ends with the stop token its rollout ended with (``end_of_turn_token`` for a cut one);
- rollout importance sampling keeps the sampler's log-probs of the sampled tokens; at tokens that were never sampled
  (the rewritten confidence line, and anything after the first rewritten token) the ratio is 1
  (docs/differences.md says why);
- the distillation loss split into the confidence positions and the rest (``caopd.loss_parts``), and the student's
  entropy, as metrics;
- the shared-prefix forward (``caopd.shared_prefix``);
- the loss over chunks of completion positions from the hidden states, never the whole logits
  (``caopd.chunked_loss``; SDPO's policy term takes the same chunks' log-probs);
- the EMA teacher averaged in fp32, saved in every checkpoint and restored on resume (``caopd.teacher``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from accelerate.utils import gather_object, is_peft_model
from trl.experimental.sdft.loss_utils import apply_importance_sampling_clipping
from trl.trainer.utils import entropy_from_logits, pad, selective_log_softmax

from caopd.chunked_loss import (
    CompletionStates,
    chunked_per_token,
    chunking_problem,
    hidden_states_as_logits,
)
from caopd.confidence import parse_confidence
from caopd.groups import RolloutRecord, local_records, step_statistics
from caopd.loss_parts import loss_parts, per_token_divergence, per_token_divergence_by_row
from caopd.prompts import end_of_turn_token
from caopd.rollout_log import RolloutLog, RolloutLogTrimCallback
from caopd.self_consistency import teacher_anchored_references
from caopd.shared_prefix import enable_shared_prefix, shared_prefix_logits, sharing_mode
from caopd.targets import (
    common_prefix_length,
    reserved_completion_tokens,
    rewrite_completion_ids,
    statement_token_mask,
)
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


def each_split(dataset: Any, prepare: Callable[[Any], Any]) -> Any:
    """``prepare`` applied to an evaluation dataset, or to each one of a dict of them (the Trainer takes both)."""
    if isinstance(dataset, dict):
        return {name: prepare(rows) for name, rows in dataset.items()}
    return prepare(dataset)


class CaOPDStep:
    """Mixed in before a TRL self-distillation trainer (``SDFTTrainer``, ``SDPOTrainer``); see the module doc.

    The backbone sets ``teacher_sync_callbacks`` to TRL's (LoRA adapter EMA, separate-model EMA) callback classes of
    its own module, and calls ``setup_caopd`` at the end of its ``__init__``.
    """

    teacher_sync_callbacks: tuple[type, type]

    def setup_caopd(self) -> None:
        args = self.args
        self._equivalent = resolve_equivalence(args.equivalence, self.task) if args.self_consistency else None
        self.rollout_log = RolloutLog(args.output_dir, self.accelerator.process_index)
        self.add_callback(TeacherRestoreCallback(self))
        if args.save_rollouts:
            self.add_callback(RolloutLogTrimCallback(self.rollout_log))
        self.end_of_turn_id = end_of_turn_token(self._tokenizer, self.eos_token_ids)
        if args.empirical_calibration:
            self._reserve_room_for_confidence()
        self.shares_prefix = self.shared_prefix_mode() == "on"
        self.chunks_loss = self.loss_chunking_mode() == "on"
        if self.shares_prefix:
            for model in self._forwarded_models():
                enable_shared_prefix(model)

    # ------------------------------------------------------------------------------------------------- tokens
    def _encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False)

    def _decode(self, ids) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    def _strip_eos(self, ids: list[int]) -> list[int]:
        return ids[:-1] if ids and ids[-1] in self.eos_token_ids else ids

    def _stop_token(self, ids: list[int]) -> int:
        """The stop token a rollout ended with; the template's end-of-turn token for one the length limit cut."""
        return ids[-1] if ids and ids[-1] in self.eos_token_ids else self.end_of_turn_id

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

    @contextmanager
    def _prompt_limit(self, limit: int | None):
        """TRL truncates every prompt to max_prompt_length; teacher prompts get their own, longer limit."""
        saved, self.max_prompt_length = self.max_prompt_length, limit
        try:
            yield
        finally:
            self.max_prompt_length = saved

    # ------------------------------------------------------------------------------------------ verdicts, P_acc
    def share_records(self, uids: list[int], texts: list[str], verdicts: list[bool]) -> list[RolloutRecord]:
        """This process's verdicts, shared: every process gets the same list of every rollout of the batch."""
        keep_solutions = getattr(self.args, "teacher_context_mode", None) == "correct_solution"
        rank, reading = self.accelerator.process_index, self.args.confidence_reading
        answer_key = getattr(self.task, "answer_key", None)
        local = local_records(uids, texts, verdicts, rank, keep_solutions, reading, answer_key)
        return gather_object(local) if self.accelerator.num_processes > 1 else local

    def _self_consistency_judge(self, inputs: list[dict[str, Any]]):
        """Teacher-anchored self-consistency: ``(prompt id, text) -> bool``, true when the text is equivalent to its
        prompt's greedy reference."""
        references = self._self_consistency_references(inputs)
        return lambda uid, text: bool(self._equivalent(text, references[uid]))

    def _self_consistency_references(self, inputs: list[dict[str, Any]]) -> dict[int, str]:
        references = teacher_anchored_references(self, inputs)
        mode = "train" if self.model.training else "eval"
        reading = self.args.confidence_reading
        formats = [parse_confidence(reference, reading) is not None for reference in references.values()]
        self._metrics[mode]["caopd/reference_confidence_format"].append(sum(formats) / len(formats))
        return references

    # ------------------------------------------------------------------------------------------------ rewrite
    def calibrate(self, batch: dict[str, Any], sampled: list[list[int]], p_acc: list[float]) -> None:
        """Rewrite every completion of ``batch`` to its target (``Confidence: {P_acc}``, then its stop token) and
        rebuild what derives from the completion ids; rollout log-probs are kept for the tokens still sampled."""
        targets = [
            rewrite_completion_ids(self._strip_eos(ids), p, self._decode, self._encode, self._stop_token(ids))
            for ids, p in zip(sampled, p_acc, strict=True)
        ]
        sampled_lengths = [common_prefix_length(ids, target) for ids, target in zip(sampled, targets, strict=True)]
        kept_rows = batch["completion_mask"].any(dim=1).tolist()  # rows a backbone masked out stay masked out
        device, tensors = batch["completion_ids"].device, [torch.tensor(ids, dtype=torch.long) for ids in targets]
        batch["completion_ids"] = pad(tensors, self._tokenizer.pad_token_id, padding_side="right").to(device)
        masks = [torch.full((len(ids),), int(kept)) for ids, kept in zip(targets, kept_rows, strict=True)]
        batch["completion_mask"] = pad(masks, 0, padding_side="right").to(device)
        batch["raw_completion_lengths"] = torch.tensor([len(ids) for ids in targets], device=device)
        width = batch["completion_ids"].size(1)
        positions = torch.arange(width, device=device).unsqueeze(0)
        batch["sampled_mask"] = (positions < torch.tensor(sampled_lengths, device=device).unsqueeze(1)).long()
        old = batch.get("old_per_token_logps")
        if old is not None:  # the sampler's log-probs, where the target still holds the sampled token
            realigned = old.new_zeros((old.size(0), width))
            keep = min(width, old.size(1))
            realigned[:, :keep] = old[:, :keep]
            batch["old_per_token_logps"] = realigned * batch["sampled_mask"]

    def mark_confidence_tokens(self, batch: dict[str, Any]) -> None:
        """``batch["confidence_mask"]``: the tokens of each completion's confidence statement (for the loss split)."""
        completions = batch["completion_ids"]
        mask = torch.zeros_like(completions, dtype=torch.long)
        for row, ids in enumerate(self._get_completion_ids_list(batch)):
            mask[row, : len(ids)] = torch.tensor(statement_token_mask(ids, self._decode), dtype=torch.long)
        batch["confidence_mask"] = mask

    # ------------------------------------------------------------------------------------------------ logging
    def record_caopd_metrics(
        self, mode: str, records, rates, fallbacks: int, batch: dict[str, Any], sampled_lengths: list[int]
    ) -> None:
        """The step's group statistics, and the completion lengths in tokens as sampled and as trained on (after the
        rewrite, ``raw_completion_lengths``): a rewrite that grows or cuts completions shows here."""
        metrics = self._metrics[mode]
        for key, value in step_statistics(records, rates).items():
            metrics[key].append(value)
        device = self.accelerator.device
        targets = batch["raw_completion_lengths"].float()
        counts = [float(fallbacks), float(sum(sampled_lengths)), float(len(sampled_lengths))]
        totals = torch.cat([torch.tensor(counts, device=device), targets.sum().reshape(1)])
        totals = self.accelerator.reduce(totals).tolist()
        metrics["caopd/solution_fallbacks"].append(totals[0])
        metrics["caopd/completion_length_sampled"].append(totals[1] / max(totals[2], 1.0))
        metrics["caopd/completion_length_trained"].append(totals[3] / max(totals[2], 1.0))
        completion_length = batch["completion_ids"].size(1)
        teacher_prompt_lengths = batch["teacher_attention_mask"][:, :-completion_length].sum(dim=1)
        limit = self.args.max_teacher_prompt_length
        truncated = (teacher_prompt_lengths >= limit).float().mean() if limit else teacher_prompt_lengths.new_zeros(())
        metrics["caopd/teacher_prompt_truncated"].append(self.accelerator.gather(truncated.reshape(1)).mean().item())

    # ---------------------------------------------------------------------------------------------- the loss
    def _forwarded_models(self) -> list:
        """The models whose forward ``_forward_logits`` runs: the student, and a separate teacher."""
        teacher = getattr(self, "teacher_model", None)
        return [self.model] + ([teacher] if teacher is not None and teacher is not self.model else [])

    def shared_prefix_mode(self) -> str:
        """Whether the shared-prefix forward runs, and why not when it does not (recorded in the run config)."""
        return sharing_mode(self.args.shared_prefix, *self._forwarded_models())

    def loss_chunking_mode(self) -> str:
        """Whether the loss runs over chunks of completion positions (``caopd.chunked_loss``), and why not when it
        does not (recorded in the run config)."""
        if not self.args.chunked_loss:
            return "off (--no-chunked_loss)"
        if getattr(self.args, "distillation_weight", 1.0) == 0.0:
            return "off (--distillation_weight 0: TRL's policy term alone, on its own forward)"
        if getattr(self, "use_teacher_server", False):
            return "off (the teacher's log-probs come from the vLLM server)"
        for model in self._forwarded_models():
            problem = chunking_problem(model)
            if problem:
                return f"off ({problem})"
        return "on"

    def _forward_logits(self, model, input_ids, attention_mask, logits_to_keep):
        """TRL's forward for the student and the teacher, with each distinct prompt computed once where that is on
        (``caopd.shared_prefix``: same logits, loss and gradients). With the chunked loss, the final hidden states
        in place of the logits (``caopd.chunked_loss.CompletionStates``)."""
        if not getattr(self, "_states_for_loss", False):
            return self._forward_outputs(model, input_ids, attention_mask, logits_to_keep)
        with hidden_states_as_logits(model) as head:
            hidden = self._forward_outputs(model, input_ids, attention_mask, logits_to_keep)
        return CompletionStates(hidden, head)

    def _compute_teacher_student_logits(self, model, teacher_model, inputs):
        """TRL's student and teacher forward for the loss; with the chunked loss, their hidden states (other
        forwards, such as TRL's rollout log-probs, keep their logits)."""
        self._states_for_loss = self.chunks_loss
        try:
            logits = super()._compute_teacher_student_logits(model, teacher_model, inputs)
        finally:
            self._states_for_loss = False
        if isinstance(logits.student_logits, CompletionStates):
            logits.student_logits.teacher = logits.teacher_logits
        return logits

    def chunked_pass(self, student: CompletionStates, completion_ids: torch.Tensor):
        """The per-token divergence, the student's log-probs (with gradients for SDPO's policy term) and its
        entropy, from the hidden states chunk by chunk (``caopd.chunked_loss``); computed once per step and shared by
        the distillation and policy terms."""
        if student.per_token is None:
            divergence = partial(per_token_divergence, self.args)
            chunk = self.args.loss_chunk_size
            policy_term = getattr(self.args, "distillation_weight", 1.0) < 1.0  # SDPO's, on the log-probs
            student.per_token = chunked_per_token(
                divergence, student, student.teacher, completion_ids, chunk, logps_with_grad=policy_term
            )
        return student.per_token

    def _forward_outputs(self, model, input_ids, attention_mask, logits_to_keep):
        if self.shares_prefix:
            logits = shared_prefix_logits(
                model, input_ids, attention_mask, logits_to_keep, "logits_to_keep" in self.model_kwarg_keys
            )
            if logits is not None:
                return logits / self.temperature
        return super()._forward_logits(model, input_ids, attention_mask, logits_to_keep)

    def _compute_self_distillation_loss(self, model, inputs, distillation_logits):
        """TRL's loss, with the importance-sampling ratio 1 at tokens that were never sampled, plus metrics: the
        student's mean token entropy on the distilled tokens (a collapse early warning) and the loss split into
        the confidence statement and the rest (``caopd/loss_confidence``, ``caopd/loss_reasoning``).

        TRL's ``entropy_from_logits`` works through the positions in chunks (fused on GPU), so the metric adds no
        full-vocabulary temporaries: at vocab 151,936 and 8,192 tokens one fp32 copy of the logits is 4.6 GiB.
        """
        if isinstance(distillation_logits.student_logits, CompletionStates):  # the forward gave hidden states
            return self._chunked_self_distillation_loss(model, inputs, distillation_logits)
        mode = "train" if model.training else "eval"
        student, mask = distillation_logits.student_logits, distillation_logits.loss_mask
        with torch.no_grad():
            entropy = entropy_from_logits(student.detach())
            mean_entropy = (entropy.float() * mask).sum() / mask.sum().clamp(min=1)
        self._metrics[mode]["entropy"].append(self.accelerator.gather(mean_entropy.reshape(1)).mean().item())
        if "confidence_mask" in inputs:
            divergence = per_token_divergence_by_row(
                self.args, student, distillation_logits.teacher_logits, distillation_logits.completion_ids
            )
            self._log_loss_parts(mode, divergence, mask, inputs["confidence_mask"])
        if inputs.get("old_per_token_logps") is not None and self.args.distillation_is_clip is not None:
            with torch.no_grad():
                current = selective_log_softmax(student.detach(), inputs["completion_ids"])
            inputs = self._neutral_ratio_where_unsampled(inputs, current, mask)
        return super()._compute_self_distillation_loss(model, inputs, distillation_logits)

    def _chunked_self_distillation_loss(self, model, inputs, distillation_logits) -> torch.Tensor:
        """TRL's self-distillation loss (``_compute_self_distillation_loss``: per-token divergence, the clipped
        rollout importance ratio, the mean over each sequence's loss tokens and over sequences) and the same
        metrics, from the hidden states chunk by chunk (``caopd.chunked_loss``)."""
        mode = "train" if model.training else "eval"
        student = distillation_logits.student_logits
        mask, ids = distillation_logits.loss_mask, distillation_logits.completion_ids
        if mask.sum() == 0:
            self._log_self_distillation_metric(mode, 0.0)
            return student.hidden.sum() * 0.0  # attached to the student graph: zero gradients, not none
        per_token_loss, current, entropy = self.chunked_pass(student, ids)
        current = current.detach()
        mean_entropy = (entropy.float() * mask).sum() / mask.sum().clamp(min=1)
        self._metrics[mode]["entropy"].append(self.accelerator.gather(mean_entropy.reshape(1)).mean().item())
        if "confidence_mask" in inputs:
            self._log_loss_parts(mode, per_token_loss.detach(), mask, inputs["confidence_mask"])
        old = self._neutral_ratio_where_unsampled(inputs, current, mask).get("old_per_token_logps")
        if self.args.distillation_is_clip is not None and old is not None:
            per_token_loss = apply_importance_sampling_clipping(
                per_token_loss, current, old, self.args.distillation_is_clip
            )
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
        mean_loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
        self._log_self_distillation_metric(mode, self.accelerator.gather(mean_loss.detach()).mean().item())
        return loss

    def _log_loss_parts(self, mode: str, divergence: torch.Tensor, mask: torch.Tensor, confidence: torch.Tensor):
        """The Eq. 7 split of the per-token divergence, as token means over every process (``caopd.loss_parts``)."""
        parts = loss_parts(divergence, mask, confidence)
        conf_sum, conf_count, reason_sum, reason_count = self.accelerator.reduce(parts).tolist()
        if conf_count:
            self._metrics[mode]["caopd/loss_confidence"].append(conf_sum / conf_count)
        if reason_count:
            self._metrics[mode]["caopd/loss_reasoning"].append(reason_sum / reason_count)

    def _neutral_ratio_where_unsampled(
        self, inputs: dict[str, Any], current: torch.Tensor, loss_mask: torch.Tensor
    ) -> dict[str, Any]:
        """The inputs with the rollout log-probs set to the current ones at tokens never sampled: TRL's clipped ratio
        exp(current - old) is then exactly 1 there, and unchanged at the sampled tokens. The ratio at the sampled
        tokens of the loss is logged (``_record_importance_ratio``)."""
        old = inputs.get("old_per_token_logps")
        if old is None or self.args.distillation_is_clip is None:
            return inputs  # no correction: the step is on-policy (TRL keeps no rollout log-probs) or it is off
        sampled = inputs.get("sampled_mask")
        sampled = torch.ones_like(loss_mask) if sampled is None else sampled
        self._record_importance_ratio(current, old, loss_mask * sampled)
        if "sampled_mask" not in inputs:
            return inputs
        return {**inputs, "old_per_token_logps": torch.where(sampled.bool(), old, current)}

    def _record_importance_ratio(self, current: torch.Tensor, old: torch.Tensor, mask: torch.Tensor) -> None:
        """TRL's rollout importance-sampling ratio exp(current - old) at the sampled tokens of the loss: its mean,
        its max and the share of tokens where the clip (``distillation_is_clip``) cuts it, over every process."""
        ratio = torch.exp((current - old).clamp(-20.0, 20.0))
        counted = mask.bool()
        clipped = (ratio > self.args.distillation_is_clip) & counted
        largest = ratio[counted].max() if counted.any() else ratio.new_zeros(())
        device = self.accelerator.device
        sums = torch.stack([ratio[counted].sum(), clipped.sum().float(), counted.sum().float()]).to(device)
        total, clipped_count, count = self.accelerator.reduce(sums).tolist()
        if not count:
            return
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["caopd/is_ratio_mean"].append(total / count)
        metrics["caopd/is_ratio_max"].append(self.accelerator.gather(largest.reshape(1).to(device)).max().item())
        metrics["caopd/is_ratio_clipped_share"].append(clipped_count / count)

    # ------------------------------------------------------------------------------------------------ teacher
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
        adapter_callback, model_callback = self.teacher_sync_callbacks
        rate = self.args.teacher_update_rate
        if self._use_peft_ema_teacher_adapter():
            self.remove_callback(adapter_callback)
            sync_steps = self.args.teacher_sync_steps
            self.ema = FP32AdapterEMA(self.model, TEACHER_DIR, rate, sync_steps, accelerator=self.accelerator)
        else:
            self.remove_callback(model_callback)
            self.ema = FP32TeacherEMA(self.model, self.teacher_model, self.accelerator, rate)
        self.add_callback(self.ema)

    # --------------------------------------------------------------------------------------------- checkpoints
    def _save_extra(self, checkpoint: str) -> None:
        """The EMA teacher and its fp32 shadow, inside the checkpoint before its completion marker."""
        if self.ema is not None:
            separate = self.teacher_model if self.teacher_model is not self.model else None
            save_teacher(self.accelerator, separate, self.ema, checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if isinstance(self.ema, FP32AdapterEMA):
            drop_recreated_teacher_adapter(self.accelerator.unwrap_model(self.model))
