"""The distillation loss with the logits never whole: the LM head runs over chunks of completion positions.

At the paper's scale one fp32 copy of a completion's logits is 4.6 GiB (vocabulary 151,936 x 8,192 tokens), and
TRL's loss keeps several (student and teacher logits, their log-softmax, the top-k gather, their gradients). The
per-token loss needs only, per position, the student's and the teacher's values there, so:

- the student's and the teacher's forward stop at the final hidden states: while the forward runs, the LM head's
  forward is the identity (``hidden_states_as_logits``), so every slice and unpacking that TRL (or the shared-prefix
  forward) applies to its "logits" applies to the hidden states instead, and the result is aligned exactly as TRL's
  logits are;
- the head then runs over ``chunk_size`` completion positions at a time, each chunk's logits, per-token loss and
  student log-probs computed by TRL's own per-token functions, under activation checkpointing: the backward
  recomputes a chunk's logits instead of keeping them, so at most one chunk's vocabulary rows exist at once.

Because TRL's per-token functions work position by position, the chunked loss is TRL's loss; the head's matrix
product over a chunk equals the whole one's rows up to float rounding (the temperature, divided into the hidden
states instead of the logits, is exact for a head without bias).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from accelerate.utils import extract_model_from_parallel
from torch.utils.checkpoint import checkpoint
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

PerToken = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` without accelerate's wrappers (DDP, DeepSpeed, FSDP); a PEFT model forwards what is asked of it."""
    return extract_model_from_parallel(model, keep_torch_compile=False)


def chunking_problem(model: torch.nn.Module) -> str | None:
    """Why the chunked loss cannot be exact for ``model`` (None when it can): its head must be a plain linear map
    without bias, applied to the final hidden states with nothing after it (no logit soft-capping)."""
    inner = _unwrapped(model)
    head = inner.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        return f"its output head is a {type(head).__name__}, not a linear layer"
    if head.bias is not None:
        return "its output head has a bias (the temperature could not move into the hidden states)"
    if getattr(inner.config, "final_logit_softcapping", None) is not None:
        return "it soft-caps its logits after the head"
    return None


@contextmanager
def hidden_states_as_logits(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """While inside, the model's LM head returns its input: the forward's "logits" are the final hidden states.
    Yields the head, to be called on chunks of them afterwards."""
    head = _unwrapped(model).get_output_embeddings()
    own = head.__dict__.get("forward")  # a forward set on the instance (accelerate's hooks) is put back as it was
    head.forward = _identity
    try:
        yield head
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def _identity(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


@dataclass
class CompletionStates:
    """Final hidden states at the positions that predict the completion tokens, divided by the sampling
    temperature (as TRL divides its logits), and the head that makes logits of them. A student's states carry the
    teacher's they are distilled towards (``teacher``) and, once computed, the chunked pass over both
    (``per_token``: loss, log-probs, entropy), which the distillation and policy terms of one step share."""

    hidden: torch.Tensor
    head: torch.nn.Module
    teacher: CompletionStates | None = None
    per_token: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


def chunked_per_token(
    per_token: PerToken,
    student: CompletionStates,
    teacher: CompletionStates,
    completion_ids: torch.Tensor,
    chunk_size: int,
    logps_with_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``per_token(student logits, teacher logits, completion ids)``, the student's log-probs of the completion ids
    (with gradients where ``logps_with_grad``, for a policy term) and, without gradients, its entropy,
    ``[batch, length]`` each: computed ``chunk_size`` positions at a time, each chunk recomputed in the backward."""
    losses, logps, entropies = [], [], []
    for start in range(0, completion_ids.size(1), chunk_size):
        stop = start + chunk_size
        first_run: list[torch.Tensor] = []
        outputs = checkpoint(
            _chunk,
            per_token,
            student.head,
            teacher.head,
            student.hidden[:, start:stop],
            teacher.hidden[:, start:stop],
            completion_ids[:, start:stop],
            logps_with_grad,
            first_run,
            use_reentrant=False,
        )
        losses.append(outputs[0])
        logps.append(outputs[1] if logps_with_grad else first_run[1])
        entropies.append(first_run[0])
    return torch.cat(losses, dim=1), torch.cat(logps, dim=1), torch.cat(entropies, dim=1)


def _chunk(per_token, student_head, teacher_head, student_hidden, teacher_hidden, ids, logps_with_grad, first_run):
    """One chunk's differentiable outputs: the per-token loss, and the log-probs where ``logps_with_grad``. On the
    first run only, the entropy and (otherwise) the log-probs go into ``first_run``, without gradients: the
    backward's recompute needs the differentiable outputs alone."""
    student_logits = student_head(student_hidden)
    with torch.no_grad():
        teacher_logits = teacher_head(teacher_hidden)
        if not first_run:
            first_run.append(entropy_from_logits(student_logits))
            if not logps_with_grad:
                first_run.append(selective_log_softmax(student_logits, ids))
    loss = per_token(student_logits, teacher_logits, ids)
    return (loss, selective_log_softmax(student_logits, ids)) if logps_with_grad else (loss,)
