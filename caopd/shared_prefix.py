"""A forward pass that computes each distinct prompt of a micro-batch once (the K rollouts of a question share it).

TRL forwards ``prompt + completion`` for every rollout, so a prompt of P tokens is computed K times for the student
(with gradients) and K times for the teacher. Here the rows whose prompt tokens (and mask) are identical are found,
their prompt is run once with the model's key/value cache, the cache is indexed back out to one row per rollout,
and only the completions are run on top of it. Gradients flow through the cache into the one prompt computation,
so the loss and every gradient equal TRL's up to floating-point summation order.

Positions match TRL's forward exactly: without ``position_ids`` a transformers model numbers tokens by their index in
the sequence (left padding included), and a forward on a cache continues that numbering. What cannot share:

- gradient checkpointing in training (transformers drops the cache in checkpointed layers): off
  (``DistilConfig.shared_prefix_mode``), and an empty cache is an error, never a silent wrong result;
- DeepSpeed: off until it has been tested there;
- a micro-batch in which no two rows share a prompt (nothing to gain): the caller's own forward runs.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache


def prompt_groups(prefix_ids: torch.Tensor, prefix_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of ``prefix_ids`` (with their mask) and, per row, the index of its distinct row."""
    keyed = torch.cat([prefix_ids, prefix_mask.to(prefix_ids.dtype)], dim=1)
    distinct, inverse = torch.unique(keyed, dim=0, return_inverse=True)
    first = torch.full((distinct.size(0),), keyed.size(0), dtype=torch.long, device=keyed.device)
    first = first.scatter_reduce(0, inverse, torch.arange(keyed.size(0), device=keyed.device), reduce="amin")
    return first, inverse


def shared_prefix_logits(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int, trim_logits: bool = True
) -> torch.Tensor | None:
    """Logits for the last ``logits_to_keep`` tokens' predictions, as TRL's forward gives them (before temperature),
    computing each distinct prompt once; None when no two rows share a prompt or the model cannot share.

    The logits returned are those at positions ``T - logits_to_keep - 1 .. T - 2``: the prediction of each
    completion token. The prompt part is tokens ``0 .. T - logits_to_keep - 2``; the token before the first
    completion token goes with the completion, since its logit is needed. ``trim_logits``: the model takes
    ``logits_to_keep`` (the prompt's own logits are then not computed). Should the model drop the cache (gradient
    checkpointing, which the caller rules out), the result would be wrong, so the cache is checked and an error
    raised.
    """
    split = input_ids.size(1) - logits_to_keep - 1
    if split < 1:
        return None
    first, inverse = prompt_groups(input_ids[:, :split], attention_mask[:, :split])
    if first.numel() == input_ids.size(0):
        return None
    cache = DynamicCache(config=getattr(model, "config", None))
    model(
        input_ids=input_ids[first, :split],
        attention_mask=attention_mask[first, :split],
        past_key_values=cache,
        use_cache=True,
        **({"logits_to_keep": 1} if trim_logits else {}),
    )
    if cache.get_seq_length() != split:
        raise RuntimeError(
            "the model did not fill its key/value cache (gradient checkpointing?); pass --no_shared_prefix"
        )
    for layer in cache.layers:
        layer.batch_select_indices(inverse)
    logits = model(
        input_ids=input_ids[:, split:],
        attention_mask=attention_mask,
        past_key_values=cache,
        use_cache=True,
    ).logits
    return logits[:, :-1, :]
