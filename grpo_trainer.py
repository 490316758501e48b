"""RLTrainer: the paper's RL baselines, TRL's ``GRPOTrainer`` with the task's verifier in its reward.

``--rl_reward correctness`` is GRPO with a 0/1 verifier reward; ``rlcr`` and ``car`` are RLCR's three gated terms
(format, accuracy, calibration; ``caopd.rewards``), weighted through TRL's ``reward_weights``. The prompts, the
confidence instruction, the verifier and the confidence parser are those of the distillation backbones, so the arms
of a comparison differ only in how they train. There is no teacher and no CaOPD step; what is added to TRL's
trainer: complete checkpoints (``caopd.checkpoints``), the prompt length limit, the shared-prefix forward of the
distillation backbones (``caopd.shared_prefix``), and the same P_acc metrics and rollout log (with each reward term)
as the distillation runs.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from accelerate.utils import gather_object
from datasets import Dataset
from trl import GRPOTrainer

from caopd.checkpoints import CompleteCheckpoints
from caopd.groups import local_records, step_statistics, success_rates
from caopd.held_out import HeldOutEvaluation
from caopd.model_card import RunModelCard
from caopd.rewards import completion_text, rl_reward_functions
from caopd.rollout_log import RolloutLog, RolloutLogTrimCallback, rollout_rows
from caopd.shared_prefix import enable_shared_prefix, shared_prefix_logps, sharing_mode
from caopd.tasks.base import Task
from distil_config import RLConfig


class RLTrainer(CompleteCheckpoints, HeldOutEvaluation, RunModelCard, GRPOTrainer):
    """GRPO with the task's verifier (and, for RLCR and CAR, the stated confidence) as its reward."""

    _tag_names: ClassVar[list[str]] = ["trl", "grpo", "caopd-baseline"]

    def __init__(self, model, args: RLConfig, train_dataset: Dataset, task: Task, processing_class, **kwargs):
        self.task = task
        self.judge, reward_funcs, weights = rl_reward_functions(
            task, args.rl_reward, args.car_margin, args.confidence_reading
        )
        if args.reward_weights is None:
            args.reward_weights = weights
        super().__init__(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_dataset.map(lambda _, i: {"prompt_uid": i}, with_indices=True, desc="Prompt ids"),
            processing_class=processing_class,
            **self.take_held_out(kwargs),
        )
        self.rollout_log = RolloutLog(args.output_dir, self.accelerator.process_index)
        if args.save_rollouts:
            self.add_callback(RolloutLogTrimCallback(self.rollout_log))
        self.shares_prefix = self.shared_prefix_mode() == "on"
        if self.shares_prefix:
            for forwarded in self._forwarded_models():
                enable_shared_prefix(forwarded)

    def sample_completions(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        """GRPO's TRL generation (vLLM or transformers), one completion per prompt (each question's copies side by
        side: TRL's vLLM server mode samples them as one request)."""
        return self._generate_single_turn(prompt_ids, None, {}, self.held_out.samples)[0]

    def _forwarded_models(self) -> list:
        """The policy, and the reference model where the KL term has one."""
        return [self.model] + ([self.ref_model] if self.ref_model is not None else [])

    def shared_prefix_mode(self) -> str:
        """Whether the policy and reference forwards compute each distinct prompt once (recorded in the run config)."""
        return sharing_mode(self.args.shared_prefix, *self._forwarded_models())

    def loss_chunking_mode(self) -> str:
        """Whether the loss runs over chunks of completion positions (recorded in the run config): TRL's GRPO
        computes its log-probs and entropies through its fused LM head (``trl.trainer.utils.add_fused_lm_head``), in
        tiles, never the whole logits, and so does the shared-prefix forward here (``shared_prefix_logps``)."""
        return "on (TRL's fused LM head)"

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, **kwargs
    ):
        """TRL's per-token log-probabilities (and entropies) through its fused LM head, each chunk's distinct prompts
        computed once (``caopd.shared_prefix``). Images, MoE auxiliary losses and chunks in which no two rows share a
        prompt take TRL's own forward."""
        plain = not self.shares_prefix or any(value is not None and value is not False for value in kwargs.values())
        if plain:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, **kwargs
            )
        size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), size):
            ids, mask = input_ids[start : start + size], attention_mask[start : start + size]
            with self.accelerator.autocast():
                shared = shared_prefix_logps(model, ids, mask, logits_to_keep)
            if shared is None:
                shared = super()._get_per_token_logps_and_entropies(model, ids, mask, logits_to_keep, None, True)[:2]
            logps.append(shared[0])
            entropies.append(shared[1])
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None

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
        local = local_records(uids, texts, self.judge.last_verdicts, rank, False, self.args.confidence_reading)
        records = gather_object(local) if self.accelerator.num_processes > 1 else local
        rates = success_rates(records)
        mode = "train" if self.model.training else "eval"
        for key, value in step_statistics(records, rates).items():
            self._metrics[mode][key].append(value)
        if self.args.save_rollouts and mode == "train":
            p_acc = [rates[uid] for uid in uids]
            rows = rollout_rows(self.state.global_step, uids, texts, local, p_acc, [""] * len(texts), False)
            start = rank * len(texts)
            mine = rewards[start : start + len(texts)]
            totals = (mine * self.reward_weights.to(mine.device)).nansum(dim=1).tolist()
            for row, total, terms in zip(rows, totals, mine.tolist(), strict=True):
                row["reward"] = total
                row["reward_terms"] = dict(zip(self.reward_func_names, terms, strict=True))
            self.rollout_log.append(rows)
        return rewards
