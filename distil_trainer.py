"""DistilTrainer: CaOPD on the SDFT backbone, TRL's ``SDFTTrainer`` with the CaOPD step wired in after the rollouts.

Per generation batch: verify every rollout -> share verdicts across processes -> P_acc per prompt over all its K
rollouts -> rewrite the student completion ids and the teacher context (``caopd.targets``) -> TRL builds the
teacher inputs and computes the distillation loss as usual. The pieces every backbone shares (the rewrite, the
loss metrics, the EMA teacher in checkpoints, the shared-prefix forward) are ``caopd.step.CaOPDStep``; what is
SDFT's own is here: the teacher sees the golden demonstration (or, in ``correct_solution`` mode, a peer's verified
rollout) with the CaOPD note before its closing instruction.
"""

from __future__ import annotations

from typing import Any, ClassVar

from datasets import Dataset
from trl.experimental.sdft import SDFTTrainer
from trl.experimental.sdft.teacher_sync import PEFTAdapterEMACallback, SyncTeacherModelCallback

from caopd.checkpoints import CompleteCheckpoints
from caopd.groups import success_rates, teacher_references
from caopd.held_out import HeldOutEvaluation
from caopd.model_card import CAOPD_PAPER, RunModelCard
from caopd.rollout_log import rollout_rows
from caopd.step import CaOPDStep, each_split
from caopd.targets import teacher_context
from caopd.tasks.base import Task
from distil_config import DistilConfig


def add_trainer_columns(dataset: Dataset, mode: str, instruction: str | None = None) -> Dataset:
    """Add the prompt id (groups rollouts across processes) and TRL's ``privileged_context`` column. A row without
    its demonstration is refused by name, as TRL's SDFT refuses a row without its privileged context."""

    def columns(row: dict[str, Any], index: int) -> dict[str, Any]:
        if not isinstance(row["demonstration"], str):
            raise ValueError(
                f"row {index}: the 'demonstration' column holds {type(row['demonstration']).__name__}, not text; "
                "SDFT shows every row's golden demonstration to the teacher, so each row needs one"
            )
        context = teacher_context(mode, row["demonstration"], None, instruction)
        return {"prompt_uid": index, "privileged_context": context}

    return dataset.map(columns, with_indices=True, desc="Teacher contexts")


class DistilTrainer(CaOPDStep, CompleteCheckpoints, HeldOutEvaluation, RunModelCard, SDFTTrainer):
    """On-policy self-distillation (SDFT) with CaOPD's empirical-confidence targets."""

    _tag_names: ClassVar[list[str]] = ["trl", "sdft", "caopd"]
    _name = "CaOPD"
    _paper = CAOPD_PAPER
    config_cls = DistilConfig
    teacher_sync_callbacks = (PEFTAdapterEMACallback, SyncTeacherModelCallback)

    def __init__(self, model, args: DistilConfig, train_dataset: Dataset, task: Task, processing_class, **kwargs):
        self.task = task

        def columns(rows: Dataset) -> Dataset:
            return add_trainer_columns(rows, args.teacher_context_mode, args.teacher_instruction)

        if kwargs.get("eval_dataset") is not None:
            kwargs["eval_dataset"] = each_split(kwargs["eval_dataset"], columns)
        super().__init__(
            model=model,
            args=args,
            train_dataset=columns(train_dataset),
            processing_class=processing_class,
            **self.take_held_out(kwargs),
        )
        self.setup_caopd()

    def reference_prompts(self, examples: list[dict[str, Any]]) -> list[Any]:
        """Teacher prompts (question + golden demonstration) for the self-consistency references."""
        prompts = [example["prompt"] for example in examples]
        return self.teacher_context_builder.select_generation_prompts(
            prompts, [example["privileged_context"] for example in examples]
        )

    def _prepare_training_batch(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """Rollouts -> verdicts -> P_acc over all K rollouts of each prompt -> rewritten targets -> teacher inputs."""
        batch = self.sample_rollouts(inputs)
        mode = "train" if self.model.training else "eval"
        self._record_completion_metrics(mode, batch)

        sampled = self._get_completion_ids_list(batch)
        texts = [self._decode(self._strip_eos(ids)) for ids in sampled]
        uids = [example["prompt_uid"] for example in inputs]
        judge = self._self_consistency_judge(inputs) if self.args.self_consistency else None
        verdicts = [
            judge(uid, text) if judge else self.task.verify(text, example["ground_truth"])
            for uid, example, text in zip(uids, inputs, texts, strict=True)
        ]
        records = self.share_records(uids, texts, verdicts)
        rates = success_rates(records)
        p_acc = [rates[uid] for uid in uids]

        calibrate, context_mode = self.args.empirical_calibration, self.args.teacher_context_mode
        rank = self.accelerator.process_index
        demonstrations = [example["demonstration"] for example in inputs]
        references, fallbacks = teacher_references(demonstrations, uids, records, rank, context_mode)
        contexts = [
            teacher_context(context_mode, reference, p if calibrate else None, self.args.teacher_instruction)
            for reference, p in zip(references, p_acc, strict=True)
        ]
        if calibrate:
            self.calibrate(batch, sampled, p_acc)
        self.mark_confidence_tokens(batch)

        with self._prompt_limit(self.args.max_teacher_prompt_length):
            teacher_batch = self.teacher_context_builder.build(
                [example["prompt"] for example in inputs], contexts, batch["completion_ids"], batch["completion_mask"]
            )
        batch.update(teacher_batch)

        self.record_caopd_metrics(mode, records, rates, fallbacks, batch, [len(ids) for ids in sampled])
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
