"""RLTrainer: the paper's RL baselines, TRL's ``GRPOTrainer`` with the task's verifier in its reward.

``--rl_reward correctness`` is GRPO with a 0/1 verifier reward; ``rlcr`` and ``car`` add the stated confidence
(``caopd.rewards``). The prompts, the confidence instruction, the verifier and the confidence parser are those of
the distillation backbones, so the arms of a comparison differ only in how they train. There is no teacher and no
CaOPD step; what is added to TRL's trainer: complete checkpoints (``caopd.checkpoints``), the prompt length limit,
and the same P_acc metrics and rollout log as the distillation runs.
"""

from __future__ import annotations

from typing import ClassVar

from accelerate.utils import gather_object
from datasets import Dataset
from trl import GRPOTrainer

from caopd.checkpoints import CompleteCheckpoints
from caopd.groups import local_records, step_statistics, success_rates
from caopd.rewards import CalibrationReward, completion_text
from caopd.rollout_log import RolloutLog, RolloutLogTrimCallback, rollout_rows
from caopd.tasks.base import Task
from distil_config import RLConfig


class RLTrainer(CompleteCheckpoints, GRPOTrainer):
    """GRPO with the task's verifier (and, for RLCR and CAR, the stated confidence) as its reward."""

    _tag_names: ClassVar[list[str]] = ["trl", "grpo", "caopd-baseline"]

    def __init__(self, model, args: RLConfig, train_dataset: Dataset, task: Task, processing_class, **kwargs):
        self.task = task
        self.reward = CalibrationReward(task, args.rl_reward, args.car_margin)
        super().__init__(
            model=model,
            reward_funcs=[self.reward],
            args=args,
            train_dataset=train_dataset.map(lambda _, i: {"prompt_uid": i}, with_indices=True, desc="Prompt ids"),
            processing_class=processing_class,
            **kwargs,
        )
        self.rollout_log = RolloutLog(args.output_dir, self.accelerator.process_index)
        if args.save_rollouts:
            self.add_callback(RolloutLogTrimCallback(self.rollout_log))

    def shared_prefix_mode(self) -> str:
        return "off (the GRPO backbone forwards every rollout's prompt, as TRL does)"

    def _tokenize_prompts(self, prompts: list):
        """TRL's tokenization, with prompts cut to ``max_prompt_length`` from the left (as TRL's other trainers)."""
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts)
        limit = self.args.max_prompt_length
        if limit is not None:
            prompt_ids = [list(ids)[-limit:] for ids in prompt_ids]
        return prompt_ids, images, multimodal_fields

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards; beside them the same P_acc statistics and rollout log as a distillation run."""
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        texts = [completion_text(completion) for completion in completions]
        uids = [example["prompt_uid"] for example in inputs]
        rank = self.accelerator.process_index
        local = local_records(uids, texts, self.reward.last_verdicts, rank, keep_solutions=False)
        records = gather_object(local) if self.accelerator.num_processes > 1 else local
        rates = success_rates(records)
        mode = "train" if self.model.training else "eval"
        for key, value in step_statistics(records, rates).items():
            self._metrics[mode][key].append(value)
        if self.args.save_rollouts and mode == "train":
            p_acc = [rates[uid] for uid in uids]
            rows = rollout_rows(self.state.global_step, uids, texts, local, p_acc, [""] * len(texts), False)
            start = rank * len(texts)
            for row, reward in zip(rows, rewards[start : start + len(texts), 0].tolist(), strict=True):
                row["reward"] = reward
            self.rollout_log.append(rows)
        return rewards
