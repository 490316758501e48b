"""A forward pass that computes each distinct prompt of a micro-batch once (the K rollouts of a question share it).

TRL forwards ``prompt + completion`` for every rollout, so a prompt of P tokens is computed K times for the student
(with gradients) and K times for the teacher. Here the rows whose prompt tokens (and mask) are identical are found,
their prompt is run once into a key/value cache, the cache is indexed out to one row per rollout, and only the
completions are run on top of it. Gradients flow through the cache into the one prompt computation, so the loss and
every gradient equal TRL's up to floating-point summation order.

Positions match TRL's forward exactly: without ``position_ids`` a transformers model numbers tokens by their index in
the sequence (left padding included), and a forward on a cache continues that numbering.

Gradient checkpointing: transformers drops the cache inside checkpointed layers, because a layer that appends to a
cache would append a second time when the backward pass recomputes it. The two caches here do not append: the prompt
cache overwrites its states (a recompute writes equal ones), the completion cache returns ``prompt + new`` states and
stores nothing (a recompute reads the same prompt states). So the layers are allowed to keep them, and the result is
exact with non-reentrant checkpointing, transformers' default. Reentrant checkpointing passes no gradient through
state outside a layer's arguments: the caller turns sharing off there (``DistilConfig.shared_prefix_mode``), and
DeepSpeed until it has been tested. Not shared, and the caller's own forward runs: a model whose cache is not plain
full attention (sliding windows, linear attention), a model that does not fill or read the caches (checked on every
call, said once), a micro-batch in which no two rows share a prompt.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import logging

logger = logging.get_logger(__name__)


class _PromptLayer(DynamicLayer):
    """One layer's keys and values of the distinct prompts; a recompute overwrites them with equal ones."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states
        return key_states, value_states


class _CompletionLayer(DynamicLayer):
    """One layer's prompt keys and values, one row per rollout; completion tokens attend to them and to their own,
    and nothing is stored, so a recompute sees the same states."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values
        self.read = False

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.read = True
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def prompt_groups(prefix_ids: torch.Tensor, prefix_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of ``prefix_ids`` (with their mask) and, per row, the index of its distinct row."""
    keyed = torch.cat([prefix_ids, prefix_mask.to(prefix_ids.dtype)], dim=1)
    distinct, inverse = torch.unique(keyed, dim=0, return_inverse=True)
    first = torch.full((distinct.size(0),), keyed.size(0), dtype=torch.long, device=keyed.device)
    first = first.scatter_reduce(0, inverse, torch.arange(keyed.size(0), device=keyed.device), reduce="amin")
    return first, inverse


@contextmanager
def _layers_keep_cache(model) -> Iterator[None]:
    """Lets checkpointed decoder layers keep the caches above (transformers' opt-in for caches a recompute cannot
    corrupt); the recompute itself reuses the arguments of the forward, so this is needed during the forward only."""
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer in layers:
            del layer._can_checkpoint_with_cache


def shared_prefix_logits(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int, trim_logits: bool = True
) -> torch.Tensor | None:
    """Logits for the last ``logits_to_keep`` tokens' predictions, as TRL's forward gives them (before temperature),
    computing each distinct prompt once; None when no two rows share a prompt or the model's cache cannot share.

    The logits returned are those at positions ``T - logits_to_keep - 1 .. T - 2``: the prediction of each
    completion token. The prompt part is tokens ``0 .. T - logits_to_keep - 2``; the token before the first
    completion token goes with the completion, since its logit is needed. ``trim_logits``: the model takes
    ``logits_to_keep`` (the prompt's own logits are then not computed). A model that does not fill or read the
    caches would give wrong logits, so both are checked; such a model gets None (its own forward runs).
    """
    split = input_ids.size(1) - logits_to_keep - 1
    if split < 1:
        return None
    first, inverse = prompt_groups(input_ids[:, :split], attention_mask[:, :split])
    if first.numel() == input_ids.size(0):
        return None
    config = _unwrapped(model).config
    prompt_cache = DynamicCache(config=config)
    if not prompt_cache.layers or any(type(layer) is not DynamicLayer for layer in prompt_cache.layers):
        return None
    prompt_cache.layers = [_PromptLayer() for _ in prompt_cache.layers]
    with _layers_keep_cache(model):
        model(
            input_ids=input_ids[first, :split],
            attention_mask=attention_mask[first, :split],
            past_key_values=prompt_cache,
            use_cache=False,
            **({"logits_to_keep": 1} if trim_logits else {}),
        )
        if prompt_cache.get_seq_length() != split:
            return _not_shared(model, "its forward did not fill the key/value cache")
        completion_cache = DynamicCache(config=config)
        completion_cache.layers = [
            _CompletionLayer(layer.keys[inverse], layer.values[inverse]) for layer in prompt_cache.layers
        ]
        logits = model(
            input_ids=input_ids[:, split:],
            attention_mask=attention_mask,
            past_key_values=completion_cache,
            use_cache=False,
        ).logits
    if not all(layer.read for layer in completion_cache.layers):
        return _not_shared(model, "its forward did not read the key/value cache")
    return logits[:, :-1, :]


def _unwrapped(model):
    """The model inside a DistributedDataParallel (or DeepSpeed) wrapper, which has no ``config``; the forward
    still goes through the wrapper, whose hooks average the gradients over processes."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return model


def _not_shared(model, reason: str) -> None:
    """A model that does not take the caches as transformers' decoders do: its own forward runs (said once)."""
    logger.warning_once(
        "shared-prefix forward: %s %s, so every rollout computes its prompt (exact, not faster); "
        "--no_shared_prefix skips the attempt",
        type(_unwrapped(model)).__name__,
        reason,
    )
