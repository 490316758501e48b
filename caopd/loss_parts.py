"""The distillation loss split by position (paper Eq. 7, Fig. 2 middle): at the confidence statement's tokens, where
CaOPD wrote P_acc, and at every other completion token (the reasoning).

TRL's trainers compute the per-token divergence inside their loss and return only its mean, so the split is computed
beside it for logging: the same TRL functions on the same logits, without gradients, one sequence at a time (no
batch x length x vocabulary temporaries beyond TRL's own). It is the divergence before any importance-sampling
ratio; the two parts are token means over the positions the loss counts.
"""

from __future__ import annotations

from typing import Any

import torch
from trl.experimental.sdft.loss_utils import (
    compute_full_logit_self_distillation_loss,
    compute_sampled_token_self_distillation_loss,
    compute_topk_self_distillation_loss,
)


def per_token_divergence(
    args: Any, student_logits: torch.Tensor, teacher_logits: torch.Tensor, completion_ids: torch.Tensor
) -> torch.Tensor:
    """The per-token divergence TRL's self-distillation loss uses for ``args.distillation_mode``."""
    mode = args.distillation_mode
    if mode == "topk_logits":
        return compute_topk_self_distillation_loss(
            student_logits,
            teacher_logits,
            distillation_topk=args.distillation_topk,
            distillation_alpha=args.distillation_alpha,
            distillation_add_tail=args.distillation_add_tail,
        )
    if mode == "full_logits":
        return compute_full_logit_self_distillation_loss(
            student_logits, teacher_logits, distillation_alpha=args.distillation_alpha
        )
    if mode == "sampled_token":
        return compute_sampled_token_self_distillation_loss(
            student_logits, teacher_logits, completion_ids, distillation_alpha=args.distillation_alpha
        )
    raise ValueError(f"distillation_mode must be sampled_token, full_logits or topk_logits, got {mode!r}")


@torch.no_grad()
def loss_parts(
    args: Any,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    completion_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    confidence_mask: torch.Tensor,
) -> torch.Tensor:
    """``[confidence sum, confidence tokens, reasoning sum, reasoning tokens]`` of the per-token divergence over the
    positions ``loss_mask`` counts (sums, so that processes can add theirs before dividing)."""
    confidence = loss_mask * confidence_mask
    reasoning = loss_mask * (1 - confidence_mask)
    totals = torch.zeros(4, dtype=torch.float64, device=student_logits.device)
    for row in range(student_logits.size(0)):
        rows = slice(row, row + 1)
        divergence = per_token_divergence(
            args, student_logits[rows].detach(), teacher_logits[rows], completion_ids[rows]
        ).double()
        totals += torch.stack(
            [
                (divergence * confidence[rows]).sum(),
                confidence[rows].sum().double(),
                (divergence * reasoning[rows]).sum(),
                reasoning[rows].sum().double(),
            ]
        )
    return totals
