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
state outside a layer's arguments: the caller turns sharing off there (``DistilTrainer.shared_prefix_mode``), and
under DeepSpeed and FSDP until they have been tested. Not shared, and the caller's own forward runs: a model whose
cache is not plain full attention (sliding windows, linear attention), a micro-batch in which no two rows share a
prompt. A model that does not fill or read the caches (checked on every call, said once) gets the unshared forward
from here.

Under DistributedDataParallel both passes run inside one forward of the wrapper, as TRL's single forward does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig
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
    before = [layer._can_checkpoint_with_cache for layer in layers]
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer, allowed in zip(layers, before, strict=True):
            layer._can_checkpoint_with_cache = allowed


def shared_prefix_logits(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int, trim_logits: bool = True
) -> torch.Tensor | None:
    """Logits for the last ``logits_to_keep`` tokens' predictions, as TRL's forward gives them (before temperature),
    computing each distinct prompt once; None, before any forward, when no two rows share a prompt or the model's
    cache cannot share.

    The logits returned are those at positions ``T - logits_to_keep - 1 .. T - 2``: the prediction of each
    completion token. ``trim_logits``: the model takes ``logits_to_keep`` (the prompt's own logits are then not
    computed). Both passes run inside one forward of a DistributedDataParallel wrapper, which runs collectives in
    every forward: processes that share different numbers of prompts would otherwise wait on each other forever.
    """
    split = input_ids.size(1) - logits_to_keep - 1
    if split < 1:
        return None
    first, inverse = prompt_groups(input_ids[:, :split], attention_mask[:, :split])
    if first.numel() == input_ids.size(0):
        return None
    inner = _unwrapped(model)
    layers = DynamicCache(config=inner.config).layers
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    groups = _Groups(split, first, inverse, type(inner).__name__)

    def passes(forward) -> torch.Tensor:
        with _layers_keep_cache(model):
            return _two_passes(forward, inner.config, input_ids, attention_mask, groups, trim_logits)

    return _as_one_forward(model, passes)


@dataclass(frozen=True)
class _Groups:
    """Where the prompt ends, each distinct prompt's first row, each row's distinct prompt, and the model's name."""

    split: int
    first: torch.Tensor
    inverse: torch.Tensor
    model_name: str


def _two_passes(forward, config, input_ids, attention_mask, groups: _Groups, trim_logits: bool) -> torch.Tensor:
    """The distinct prompts (tokens ``0 .. split - 1``) into a cache, then every row's completion on its prompt's
    states; the token before the first completion token goes with the completion, since its logit is needed. A
    model that does not fill or read the caches would give wrong logits, so both are checked, and such a model gets
    the unshared forward."""
    split, first, inverse = groups.split, groups.first, groups.inverse
    prompt_cache = DynamicCache(config=config)
    prompt_cache.layers = [_PromptLayer() for _ in prompt_cache.layers]
    trim = {"logits_to_keep": 1} if trim_logits else {}
    forward(
        input_ids=input_ids[first, :split],
        attention_mask=attention_mask[first, :split],
        past_key_values=prompt_cache,
        use_cache=False,
        **trim,
    )
    if prompt_cache.get_seq_length() == split:
        completion_cache = DynamicCache(config=config)
        completion_cache.layers = [
            _CompletionLayer(layer.keys[inverse], layer.values[inverse]) for layer in prompt_cache.layers
        ]
        logits = forward(
            input_ids=input_ids[:, split:],
            attention_mask=attention_mask,
            past_key_values=completion_cache,
            use_cache=False,
        ).logits
        if all(layer.read for layer in completion_cache.layers):
            return logits[:, :-1, :]
        _not_shared(groups.model_name, "does not read the key/value cache")
    else:
        _not_shared(groups.model_name, "does not fill the key/value cache")
    keep = input_ids.size(1) - split - 1  # TRL's forward (SDFTTrainer._forward_logits), in this same wrapper call
    trim = {"logits_to_keep": keep + 1} if trim_logits else {}
    logits = forward(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **trim).logits
    return logits[:, :-1, :][:, -keep:, :]


def _as_one_forward(model, passes) -> torch.Tensor:
    """``passes(forward)`` as a single forward of ``model``: a wrapped model's forward is pointed at ``passes`` for
    one call of the wrapper, so the wrapper's collectives and gradient hooks run once, as for TRL's forward."""
    inner = _unwrapped(model)
    if inner is model:
        return passes(model)
    own_forward = inner.__dict__.get("forward")  # an instance-level forward (e.g. accelerate's) stays in the chain
    forward = inner.forward
    inner.forward = lambda: passes(forward)
    try:
        return model()
    finally:
        if own_forward is None:
            del inner.forward
        else:
            inner.forward = own_forward


def _unwrapped(model):
    """The model inside a DistributedDataParallel or DeepSpeed wrapper, which has no model config (DeepSpeed's
    ``config`` is its own); the forward still goes through the wrapper, whose hooks average the gradients."""
    while not isinstance(getattr(model, "config", None), PretrainedConfig) and hasattr(model, "module"):
        model = model.module
    return model


def _not_shared(model_name: str, reason: str) -> None:
    """Said once for a model that does not take the caches as transformers' decoders do."""
    logger.warning_once(
        "shared-prefix forward: %s %s, so every rollout computes its prompt (exact, not faster); "
        "--no_shared_prefix skips the attempt",
        model_name,
        reason,
    )
