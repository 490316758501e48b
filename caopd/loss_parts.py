"""The distillation loss split by position (paper Eq. 7, Fig. 2 middle): at the confidence statement's tokens, where
CaOPD wrote P_acc, and at every other completion token (the reasoning).

TRL's trainers compute the per-token divergence inside their loss and return only its mean, so the split is computed
beside it for logging: the same TRL functions on the same logits, without gradients, one sequence at a time (no
batch x length x vocabulary temporaries beyond TRL's own); the chunked loss (``caopd.chunked_loss``) has the
per-token divergence already and splits it directly. It is the divergence before any importance-sampling ratio; the
two parts are token means over the positions the loss counts.
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
def per_token_divergence_by_row(
    args: Any, student_logits: torch.Tensor, teacher_logits: torch.Tensor, completion_ids: torch.Tensor
) -> torch.Tensor:
    """``per_token_divergence`` without gradients, one sequence at a time (no batch-wide temporaries)."""
    rows = [
        per_token_divergence(args, student_logits[row : row + 1].detach(), teacher_logits[row : row + 1], ids)
        for row, ids in enumerate(completion_ids.split(1))
    ]
    return torch.cat(rows)


@torch.no_grad()
def loss_parts(divergence: torch.Tensor, loss_mask: torch.Tensor, confidence_mask: torch.Tensor) -> torch.Tensor:
    """``[confidence sum, confidence tokens, reasoning sum, reasoning tokens]`` of the per-token ``divergence`` over
    the positions ``loss_mask`` counts (sums, so that processes can add theirs before dividing)."""
    divergence = divergence.double()
    confidence = (loss_mask * confidence_mask).double()
    reasoning = (loss_mask * (1 - confidence_mask)).double()
    return torch.stack(
        [(divergence * confidence).sum(), confidence.sum(), (divergence * reasoning).sum(), reasoning.sum()]
    )
