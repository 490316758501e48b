"""SDPODistilTrainer: CaOPD on the SDPO backbone, TRL's ``SDPOTrainer`` with the CaOPD step between its rewards and
its teacher contexts.

TRL's flow stays as it is: K rollouts per question, the task's verifier as the one reward (``VerifierReward``),
group advantages, a successful rollout of the same question shown to the teacher as the "correct solution", the
distillation loss blended with the policy-gradient loss by ``distillation_weight``. CaOPD adds, where SDPO builds its
teacher contexts (``CalibratedReprompts.build``): P_acc = the share of the group's rollouts whose reward reaches
``success_reward_threshold`` (exactly SDPO's successful rollouts) over every process, the student completions
rewritten to ``Confidence: {P_acc}`` (so the successful rollout the teacher sees carries P_acc too), and the CaOPD
note before the reprompt's closing instruction. Without calibration it is TRL's ``SDPOTrainer``.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
from datasets import Dataset
from trl.experimental.sdpo import SDPOTrainer
from trl.experimental.sdpo.sdpo_trainer import SuccessfulRolloutTeacherContextBuilder
from trl.experimental.sdpo.teacher_sync import PEFTAdapterEMACallback, SyncTeacherModelCallback

from caopd.checkpoints import CompleteCheckpoints
from caopd.chunked_loss import CompletionStates
from caopd.groups import success_rates
from caopd.held_out import HeldOutEvaluation
from caopd.model_card import CAOPD_PAPER, RunModelCard
from caopd.prompts import with_privileged_context
from caopd.rewards import VerifierReward
from caopd.rollout_log import rollout_rows
from caopd.step import CaOPDStep, each_split
from caopd.targets import closing_instruction, teacher_context, teacher_note, with_note_before
from caopd.tasks.base import Task
from distil_config import SDPODistilConfig

logger = logging.getLogger(__name__)


FEEDBACK_COLUMNS = ("privileged_context", "feedback")  # TRL's name for environment feedback, and ours


def sdpo_columns(dataset: Dataset, environment_feedback: bool) -> Dataset:
    """Add the prompt id. SDPO reads environment feedback from ``privileged_context`` (TRL's column), which rows may
    also carry as ``feedback``; it is used only when ``include_environment_feedback`` is on, and dropped (said once)
    otherwise."""
    present = [column for column in FEEDBACK_COLUMNS if column in dataset.column_names]
    if environment_feedback:
        if not present:
            raise ValueError(
                "--include_environment_feedback needs the environment's message on an earlier attempt in a "
                "'privileged_context' (TRL's name) or 'feedback' column of the rows; this dataset has neither"
            )
        if len(present) > 1:
            raise ValueError(
                "the rows carry environment feedback twice, as 'privileged_context' and as 'feedback'; keep one"
            )
        if present[0] == "feedback":
            dataset = dataset.rename_column("feedback", "privileged_context")
    elif "privileged_context" in present:
        logger.warning(
            "the rows' 'privileged_context' (environment feedback) is ignored: --include_environment_feedback is off"
        )
        dataset = dataset.remove_columns("privileged_context")
    return dataset.map(lambda _, index: {"prompt_uid": index}, with_indices=True, desc="Prompt ids")


def _with_note(message: Any, note: str, closing: str) -> Any:
    """A reprompted teacher message with the note before its closing instruction; other messages as they are (a
    rollout without a successful sibling or feedback keeps its own prompt, and SDPO does not distil it)."""
    text = message[-1]["content"] if isinstance(message, list) else message
    noted = with_note_before(text, note, closing)
    if noted is None:
        return message
    return [*message[:-1], {**message[-1], "content": noted}] if isinstance(message, list) else noted


class CalibratedReprompts(SuccessfulRolloutTeacherContextBuilder):
    """TRL's successful-rollout teacher contexts, built on the rewritten completions, with the CaOPD note."""

    def build(self, output, prompts, rewards, feedbacks=None):
        self.notes = self.trainer.caopd_step(output, rewards)
        teacher = super().build(output, prompts, rewards, feedbacks)
        self.trainer.log_caopd_step({**output, **teacher}, self.messages)
        return teacher

    def _tokenize_teacher_messages(self, teacher_messages_list):
        if self.notes is not None:
            closing = closing_instruction(self.trainer.args.reprompt_template)
            teacher_messages_list = [
                _with_note(message, note, closing)
                for message, note in zip(teacher_messages_list, self.notes, strict=True)
            ]
        self.messages = teacher_messages_list
        return super()._tokenize_teacher_messages(teacher_messages_list)


class SDPODistilTrainer(CaOPDStep, CompleteCheckpoints, HeldOutEvaluation, RunModelCard, SDPOTrainer):
    """Self-Distillation Policy Optimization (SDPO) with CaOPD's empirical-confidence targets."""

    _tag_names: ClassVar[list[str]] = ["trl", "sdpo", "caopd"]
    _name = "CaOPD-SDPO"
    _paper = CAOPD_PAPER
    config_cls = SDPODistilConfig
    teacher_sync_callbacks = (PEFTAdapterEMACallback, SyncTeacherModelCallback)

    def __init__(self, model, args: SDPODistilConfig, train_dataset: Dataset, task: Task, processing_class, **kwargs):
        self.task = task
        self.verifier_reward = VerifierReward(task)
        if args.empirical_calibration:
            closing_instruction(args.reprompt_template)

        def columns(rows: Dataset) -> Dataset:
            return sdpo_columns(rows, args.include_environment_feedback)

        if kwargs.get("eval_dataset") is not None:
            kwargs["eval_dataset"] = each_split(kwargs["eval_dataset"], columns)
        super().__init__(
            model=model,
            reward_funcs=[self.verifier_reward],
            args=args,
            train_dataset=columns(train_dataset),
            processing_class=processing_class,
            **self.take_held_out(kwargs),
        )
        self.teacher_context_builder = CalibratedReprompts(self)
        self.setup_caopd()

    def reference_prompts(self, examples: list[dict[str, Any]]) -> list[Any]:
        """Teacher prompts (question + golden demonstration) for the self-consistency references."""
        return [
            with_privileged_context(example["prompt"], teacher_context("demo", example["demonstration"], None))
            for example in examples
        ]

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """The verifier's rewards (against this step's references under self-consistency), as TRL computes them."""
        self._step_inputs = inputs
        self.verifier_reward.judge = self._self_consistency_judge(inputs) if self.args.self_consistency else None
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def caopd_step(self, batch: dict[str, Any], rewards: torch.Tensor) -> list[str] | None:
        """Verdicts = SDPO's successes, P_acc over every process, the completions rewritten; the notes to add."""
        sampled = self._get_completion_ids_list(batch)
        texts = [self._decode(self._strip_eos(ids)) for ids in sampled]
        uids = [example["prompt_uid"] for example in self._step_inputs]
        verdicts = (rewards >= self.args.success_reward_threshold).tolist()
        records = self.share_records(uids, texts, verdicts)
        rates = success_rates(records)
        p_acc = [rates[uid] for uid in uids]
        self._step_records = (records, rates, uids, texts, p_acc, [len(ids) for ids in sampled])
        calibrate = self.args.empirical_calibration
        if calibrate:
            self.calibrate(batch, sampled, p_acc)
        self.mark_confidence_tokens(batch)
        return [teacher_note(p) for p in p_acc] if calibrate else None

    def log_caopd_step(self, batch: dict[str, Any], messages: list[Any]) -> None:
        records, rates, uids, texts, p_acc, sampled_lengths = self._step_records
        mode = "train" if self.model.training else "eval"
        self.record_caopd_metrics(mode, records, rates, 0, batch, sampled_lengths)
        self._record_distilled_rows(mode, records, batch["self_distillation_mask"])
        if self.args.save_rollouts and mode == "train":
            rank = self.accelerator.process_index
            own = [record for record in records if record.rank == rank]
            contexts = [message[-1]["content"] if isinstance(message, list) else message for message in messages]
            calibrate = self.args.empirical_calibration
            self.rollout_log.append(rollout_rows(self.state.global_step, uids, texts, own, p_acc, contexts, calibrate))

    def _record_distilled_rows(self, mode: str, records, distilled: torch.Tensor) -> None:
        """How many rollouts of the step are distilled, and how many have no successful sibling to be shown (SDPO
        distils those only from environment feedback): a step of all-failed groups teaches nothing."""
        rows = self.accelerator.reduce(distilled.float().sum()).item()
        self_excluded = self.args.dont_reprompt_on_self_success
        successes = {uid: 0 for uid in (record.uid for record in records)}
        for record in records:
            successes[record.uid] += record.correct
        alone = sum(successes[r.uid] - (r.correct and self_excluded) == 0 for r in records)
        self._metrics[mode]["caopd/rows_distilled"].append(rows)
        self._metrics[mode]["caopd/rows_without_successful_sibling"].append(float(alone))

    def _compute_teacher_student_logits(self, model, teacher_model, inputs):
        """TRL's logits, with the first ``num_loss_tokens_to_skip`` completion tokens out of the loss."""
        logits = super()._compute_teacher_student_logits(model, teacher_model, inputs)
        skip = self.args.num_loss_tokens_to_skip
        if skip > 0:
            positions = torch.arange(logits.loss_mask.size(1), device=logits.loss_mask.device).unsqueeze(0)
            logits.loss_mask = logits.loss_mask * (positions >= skip).to(logits.loss_mask.dtype)
        return logits

    def _compute_policy_loss(self, inputs, student_logits):
        """SDPO's policy-gradient term on the sampled tokens only: a rewritten confidence line was never sampled,
        and the rollout's advantage says nothing about it (a wrong answer would push P_acc down). With the chunked
        loss, from the log-probs of the chunked pass the distillation term shares (``policy_loss_from_logps``)."""
        if "sampled_mask" in inputs:
            inputs = {**inputs, "completion_mask": inputs["completion_mask"] * inputs["sampled_mask"]}
        if isinstance(student_logits, CompletionStates):
            _, logps, _ = self.chunked_pass(student_logits, inputs["completion_ids"])
            return self.policy_loss_from_logps(inputs, logps)
        return super()._compute_policy_loss(inputs, student_logits)

    def policy_loss_from_logps(self, inputs: dict[str, Any], per_token_logps: torch.Tensor) -> torch.Tensor:
        """TRL's ``SDPOTrainer._compute_policy_loss`` (the clipped importance-weighted advantage, aggregated by
        ``loss_type``, its metric logged) from the student's per-token log-probs instead of its logits: TRL's takes
        logits only, which the chunked loss never holds whole. tests/test_chunked_loss.py holds the two equal for
        every loss type and importance-sampling level."""
        mask = inputs["completion_mask"]
        old = inputs.get("old_per_token_logps")
        old = per_token_logps.detach() if old is None else old
        advantages = inputs["advantages"]
        advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
        log_ratio = per_token_logps - old
        if self.importance_sampling_level == "sequence":
            log_ratio = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
        ratio = torch.exp(log_ratio)
        clipped = torch.clamp(ratio, 1 - self.epsilon_low, 1 + self.epsilon_high)
        per_token_loss = -torch.min(ratio * advantages, clipped * advantages) * mask
        if self.loss_type == "grpo":
            loss = (per_token_loss.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
        elif self.loss_type in ("bnpo", "dapo"):
            loss = per_token_loss.sum() / mask.sum().clamp(min=1.0)
        elif self.loss_type == "dr_grpo":
            loss = per_token_loss.sum() / (per_token_loss.size(0) * self.max_completion_length)
        else:
            raise ValueError(f"Unsupported loss_type: {self.loss_type}")
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["self_distillation/policy_loss"].append(
            self.accelerator.gather(loss.detach()).mean().item()
        )
        return loss
