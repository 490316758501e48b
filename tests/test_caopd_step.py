"""The pieces of the CaOPD step both backbones share, on hand-built tensors: rollout importance sampling under the
rewrite, and the loss split into the confidence statement and the rest (paper Eq. 7)."""

import math
from types import SimpleNamespace

import pytest
import torch
from helpers import toy_trainer
from trl.experimental.sdft.sdft_trainer import DistillationLogits as SDFTLogits
from trl.experimental.sdpo.sdpo_trainer import DistillationLogits as SDPOLogits
from trl.trainer.utils import selective_log_softmax

from caopd.loss_parts import loss_parts, per_token_divergence, per_token_divergence_by_row

BACKBONES = ("sdft", "sdpo")


def _hand_batch(vocab: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(2, 4, vocab, generator=generator)
    teacher = torch.randn(2, 4, vocab, generator=generator)
    ids = torch.randint(0, vocab, (2, 4), generator=generator)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    sampled = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])  # row 0: its last two tokens were rewritten
    return student, teacher, ids, mask, sampled


def _logits(backbone, student, teacher, ids, mask):
    if backbone == "sdpo":
        return SDPOLogits(completion_ids=ids, completion_mask=mask, loss_mask=mask, student_logits=student,
                          teacher_logits=teacher)  # fmt: skip
    return SDFTLogits(completion_ids=ids, loss_mask=mask, student_logits=student, teacher_logits=teacher)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_rollout_importance_sampling_under_the_rewrite(model, tokenizer, tmp_path, backbone):
    """Equal policies: the correction changes nothing. A stale rollout policy: TRL's clipped ratio
    min(exp(current - old), clip) at the sampled tokens and exactly 1 at the tokens CaOPD wrote."""
    trainer = toy_trainer(model, tokenizer, tmp_path, backbone=backbone, distillation_mode="full_logits")
    trainer.model.train()
    student, teacher, ids, mask, sampled = _hand_batch(len(tokenizer))
    current = selective_log_softmax(student, ids)

    def loss(old):
        inputs = {"completion_ids": ids, "completion_mask": mask}
        if old is not None:
            inputs |= {"old_per_token_logps": old * sampled, "sampled_mask": sampled}
        return trainer._compute_self_distillation_loss(
            trainer.model, inputs, _logits(backbone, student, teacher, ids, mask)
        )

    assert loss(current).item() == pytest.approx(loss(None).item(), rel=1e-6)  # equal policies: a no-op

    stale = torch.tensor([[0.3, 1.0, 0.0, 0.0], [-0.5, 2.0, 0.1, 0.0]])  # current - old at the sampled tokens
    ratio = torch.where(sampled.bool(), torch.exp(stale).clamp(max=trainer.args.distillation_is_clip), 1.0)
    assert ratio[0, 1].item() == 2.0 and ratio[0, 2].item() == 1.0  # clipped; rewritten
    divergence = per_token_divergence(trainer.args, student, teacher, ids)
    expected = ((divergence * ratio * mask).sum(1) / mask.sum(1)).mean()
    assert loss(current - stale).item() == pytest.approx(expected.item(), rel=1e-5)
    counted = torch.exp(stale)[(sampled * mask).bool()]  # the ratio before the clip, at the sampled loss tokens
    logged = trainer._metrics["train"]
    assert logged["caopd/is_ratio_mean"][-1] == pytest.approx(counted.mean().item(), rel=1e-5)
    assert logged["caopd/is_ratio_max"][-1] == pytest.approx(math.exp(2.0), rel=1e-5)
    assert logged["caopd/is_ratio_clipped_share"][-1] == 2 / 5  # exp(1) and exp(2) exceed the clip 2


def test_the_policy_term_never_sees_the_rewritten_tokens(model, tokenizer, tmp_path):
    """SDPO's policy-gradient term on a rewritten batch with a stale rollout policy: its loss is TRL's clipped
    surrogate over the sampled tokens alone, and no gradient reaches the logits of the tokens CaOPD wrote (where the
    rollout log-prob is 0, a ratio exp(current - 0) would otherwise weigh in)."""
    trainer = toy_trainer(model, tokenizer, tmp_path, backbone="sdpo", distillation_weight=0.5)
    trainer.model.train()
    student, _, ids, mask, sampled = _hand_batch(len(tokenizer), seed=2)
    student.requires_grad_(True)
    current = selective_log_softmax(student, ids).detach()
    stale = torch.tensor([[0.1, 0.5, 0.0, 0.0], [-0.3, 0.05, 0.4, 0.0]])
    advantages = torch.tensor([1.0, -1.0])
    inputs = {"completion_ids": ids, "completion_mask": mask, "sampled_mask": sampled,
              "old_per_token_logps": (current - stale) * sampled, "advantages": advantages}  # fmt: skip
    loss = trainer._compute_policy_loss(inputs, student)
    loss.backward()
    counted = (mask * sampled).float()
    ratio = torch.exp(stale)
    low, high = 1 - trainer.epsilon_low, 1 + trainer.epsilon_high
    per_token = -torch.min(ratio * advantages[:, None], ratio.clamp(low, high) * advantages[:, None])
    assert loss.item() == pytest.approx(((per_token * counted).sum() / counted.sum()).item(), rel=1e-5)  # dapo
    rewritten = ~counted.bool()
    assert student.grad[rewritten].abs().max() == 0 and student.grad[counted.bool()].abs().sum() > 0


def test_loss_split_on_a_hand_built_batch():
    """Reverse KL over a two-token vocabulary, by hand: the confidence part is the mean over the statement's
    counted tokens, the reasoning part over the other counted tokens."""
    student = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    ids = torch.zeros(1, 4, dtype=torch.long)
    loss_mask = torch.tensor([[0, 1, 1, 1]])  # the first token skipped, as num_loss_tokens_to_skip does
    confidence = torch.tensor([[0, 0, 1, 1]])

    def reverse_kl(s, t):
        ps = [math.exp(v) / sum(math.exp(u) for u in s) for v in s]
        pt = [math.exp(v) / sum(math.exp(u) for u in t) for v in t]
        return sum(p * math.log(p / q) for p, q in zip(ps, pt))

    kl = [reverse_kl(student[0, i].tolist(), teacher[0, i].tolist()) for i in range(4)]
    args = SimpleNamespace(distillation_mode="full_logits", distillation_alpha=1.0)
    totals = loss_parts(per_token_divergence_by_row(args, student, teacher, ids), loss_mask, confidence).tolist()
    assert totals == pytest.approx([kl[2] + kl[3], 2, kl[1], 1])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_trainer_logs_the_split(model, tokenizer, tmp_path, backbone):
    trainer = toy_trainer(model, tokenizer, tmp_path, backbone=backbone, distillation_mode="full_logits")
    trainer.model.train()
    student, teacher, ids, mask, _ = _hand_batch(len(tokenizer), seed=1)
    confidence = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1]])  # the last counted token of row 1 is padding: not counted
    inputs = {"completion_ids": ids, "completion_mask": mask, "confidence_mask": confidence}
    trainer._compute_self_distillation_loss(trainer.model, inputs, _logits(backbone, student, teacher, ids, mask))
    divergence = per_token_divergence(trainer.args, student, teacher, ids)
    conf = (mask * confidence).bool()
    reason = (mask * (1 - confidence)).bool()
    logged = trainer._metrics["train"]
    assert logged["caopd/loss_confidence"][-1] == pytest.approx(divergence[conf].mean().item(), rel=1e-5)
    assert logged["caopd/loss_reasoning"][-1] == pytest.approx(divergence[reason].mean().item(), rel=1e-5)
