"""Each distinct prompt of a micro-batch computed once: the K rollouts of a question share it.

TRL forwards ``prompt + completion`` for every rollout, so a prompt of P tokens is computed K times for the student
(with gradients) and K times for the teacher. Here, in the manner of Prefix Grouper (Liu et al. 2025, arXiv
2506.05433), a micro-batch is packed into one sequence: every distinct prompt once, then every row's segment (its
last prompt token and its completion), each token at the position TRL's forward gives it. The layers run as one
ordinary forward over that sequence; only attention is split (``_grouped_attention``): the prompts attend causally
to themselves, and each segment attends to its prompt's tokens and causally to itself. That is the attention of
TRL's forward, row by row, so the logits, the loss and every gradient equal TRL's up to floating-point summation
order.

Why this way: every layer stays a plain function of its inputs. Gradient checkpointing (reentrant or not) recomputes
a layer from its arguments, which carry the packed layout; DeepSpeed ZeRO-3 and FSDP gather each layer's parameters
once for one forward; DistributedDataParallel sees one forward. (An earlier version ran the prompts into a key/value
cache and the completions on it: exact, but state outside a layer's arguments, so off under reentrant checkpointing
and untested under sharding.)

How: the model's attention implementation (``eager`` or ``sdpa``) is swapped for a registered wrapper
(``enable_shared_prefix``) that does what the original does unless a forward passes a ``caopd_prefix_layout``; it
then makes two calls of the original function, one over the prompts and one over the segments. Positions come as
``position_ids``; the attention mask as a placeholder that transformers passes through untouched (the wrapper builds
its own masks). Not shared, and TRL's forward runs, where it cannot be exact or cannot run: attention kernels that
take no mask of this shape (flash attention), sliding-window or hybrid layers, a model whose attention does not go
through transformers' attention interface, and a micro-batch in which no two rows share a prompt.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, PretrainedConfig
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

SUPPORTED = ("sdpa", "eager")
WRAPPER_PREFIX = "caopd_shared_prefix_"
LAYOUT_KWARG = "caopd_prefix_layout"


def prompt_groups(prefix_ids: torch.Tensor, prefix_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of ``prefix_ids`` (with their mask) as each one's first row, and per row the index of its
    distinct row."""
    keyed = torch.cat([prefix_ids, prefix_mask.to(prefix_ids.dtype)], dim=1)
    distinct, inverse = torch.unique(keyed, dim=0, return_inverse=True)
    first = torch.full((distinct.size(0),), keyed.size(0), dtype=torch.long, device=keyed.device)
    first = first.scatter_reduce(0, inverse, torch.arange(keyed.size(0), device=keyed.device), reduce="amin")
    return first, inverse


# ------------------------------------------------------------------------------------------------ the packing
@dataclass
class PrefixLayout:
    """Where the prompts and segments lie in the packed sequence, and who attends to whom.

    ``prefix_index`` (G, n): each distinct prompt's packed positions (padded to the longest, ``prefix_valid``);
    ``segment_index`` (B, S): each row's segment positions; ``row_group`` (B,): each row's prompt;
    ``prefix_mask`` (G, 1, n, n) and ``segment_mask`` (B, 1, S, n + S): True where a query attends to a key.
    ``calls`` counts the attention layers that ran grouped (a model that bypassed the wrapper is caught).
    """

    prefix_index: torch.Tensor
    prefix_valid: torch.Tensor
    segment_index: torch.Tensor
    row_group: torch.Tensor
    prefix_mask: torch.Tensor
    segment_mask: torch.Tensor
    calls: list[int] = field(default_factory=list)
    _additive: dict = field(default_factory=dict)

    def masks_for(self, base: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The two masks as the original attention function takes them: boolean (sdpa) or additive (eager)."""
        if base != "eager":
            return self.prefix_mask, self.segment_mask
        if dtype not in self._additive:
            lowest = torch.finfo(dtype).min
            self._additive[dtype] = tuple(
                torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, lowest)
                for mask in (self.prefix_mask, self.segment_mask)
            )
        return self._additive[dtype]


@dataclass
class PackedRollouts:
    """A micro-batch as one sequence: ``input_ids`` and ``position_ids`` (1, N), the layout, and ``segment_index``
    (B, S), each row's segment positions (its last prompt token, then its completion)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    layout: PrefixLayout

    @property
    def segment_index(self) -> torch.Tensor:
        return self.layout.segment_index

    def forward_kwargs(self) -> dict:
        """What the model's forward takes: a 4-D placeholder mask, which transformers passes through unchanged."""
        placeholder = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=self.input_ids.device)
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "attention_mask": placeholder,
            "use_cache": False,
            LAYOUT_KWARG: self.layout,
        }


def _with_own_key_where_none(mask: torch.Tensor, diagonal_offset: int) -> torch.Tensor:
    """A query with no key to attend (a padding position) attends to itself, so no softmax row is empty (NaN); rows
    with keys are untouched."""
    queries = mask.size(-2)
    empty = ~mask.any(dim=-1, keepdim=True)
    own = torch.zeros_like(mask)
    rows = torch.arange(queries, device=mask.device)
    own[..., rows, rows + diagonal_offset] = True
    return mask | (empty & own)


def pack_rollouts(input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int) -> PackedRollouts | None:
    """The micro-batch packed with each distinct prompt once; None when no two rows share a prompt.

    The prompt is split before its last token: tokens ``0 .. split - 1`` are shared, the last prompt token goes with
    each row's segment (its logit predicts the first completion token). Padding tokens of the shared part are left
    out; every kept token keeps its position in TRL's padded row.
    """
    rows, width = input_ids.shape
    split = width - logits_to_keep - 1
    if split < 1:
        return None
    first, inverse = prompt_groups(input_ids[:, :split], attention_mask[:, :split])
    if first.numel() == rows:
        return None
    device = input_ids.device
    prefix_real = attention_mask[first, :split].bool()
    lengths = prefix_real.sum(dim=1)
    longest = max(int(lengths.max()), 1)
    offsets = torch.cumsum(lengths, 0) - lengths
    slots = torch.arange(longest, device=device)
    prefix_valid = slots[None, :] < lengths[:, None]
    prefix_index = torch.where(prefix_valid, offsets[:, None] + slots[None, :], 0)
    columns = torch.arange(width, device=device)
    prefix_tokens = input_ids[first, :split][prefix_real]
    prefix_positions = columns[:split].expand(first.numel(), split)[prefix_real]
    segment_length = width - split
    total_prefix = int(lengths.sum())
    segment_index = total_prefix + torch.arange(rows * segment_length, device=device).view(rows, segment_length)
    packed_ids = torch.cat([prefix_tokens, input_ids[:, split:].reshape(-1)])
    positions = torch.cat([prefix_positions, columns[split:].repeat(rows)])

    causal_prefix = torch.ones(longest, longest, dtype=torch.bool, device=device).tril()
    prefix_mask = causal_prefix[None] & prefix_valid[:, None, :]
    prefix_mask = _with_own_key_where_none(prefix_mask, 0)[:, None]
    segment_keys = attention_mask[:, split:].bool()
    causal_segment = torch.ones(segment_length, segment_length, dtype=torch.bool, device=device).tril()
    own_part = causal_segment[None] & segment_keys[:, None, :]
    prompt_part = prefix_valid[inverse][:, None, :].expand(rows, segment_length, longest)
    segment_mask = _with_own_key_where_none(torch.cat([prompt_part, own_part], dim=-1), longest)[:, None]
    layout = PrefixLayout(prefix_index, prefix_valid, segment_index, inverse, prefix_mask, segment_mask)
    return PackedRollouts(packed_ids[None], positions[None], layout)


# ------------------------------------------------------------------------------------------------ the attention
def _original_attention(base: str, module: torch.nn.Module):
    """The function the model would call for ``base``: transformers' own (sdpa), or the model file's eager one."""
    if base == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[base]


def _grouped_attention(original, base, module, query, key, value, layout: PrefixLayout, **kwargs):
    """Attention over the packed sequence as two calls of the original function: the prompts over themselves, the
    segments over their prompt and themselves. ``query`` is (1, heads, N, dim), ``key`` and ``value`` (1, kv heads,
    N, dim); the result (1, N, heads, dim), as the original returns it."""
    layout.calls.append(1)
    kwargs.pop("position_ids", None)
    prefix_mask, segment_mask = layout.masks_for(base, query.dtype)

    def rows_of(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return states[0][:, index].transpose(0, 1)  # (heads, R, L, dim) -> (R, heads, L, dim)

    prefix_keys, prefix_values = rows_of(key, layout.prefix_index), rows_of(value, layout.prefix_index)
    prefix_out, _ = original(
        module, rows_of(query, layout.prefix_index), prefix_keys, prefix_values, prefix_mask, **kwargs
    )
    segment_keys = torch.cat([prefix_keys[layout.row_group], rows_of(key, layout.segment_index)], dim=2)
    segment_values = torch.cat([prefix_values[layout.row_group], rows_of(value, layout.segment_index)], dim=2)
    segment_out, _ = original(
        module, rows_of(query, layout.segment_index), segment_keys, segment_values, segment_mask, **kwargs
    )
    heads, dim = segment_out.shape[-2:]
    packed = torch.cat([prefix_out[layout.prefix_valid], segment_out.reshape(-1, heads, dim)])
    return packed[None], None


def _wrapper(base: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        layout = kwargs.pop(LAYOUT_KWARG, None)
        original = _original_attention(base, module)
        if layout is None:
            return original(module, query, key, value, attention_mask, **kwargs)
        return _grouped_attention(original, base, module, query, key, value, layout, **kwargs)

    attention.__name__ = f"{WRAPPER_PREFIX}{base}"
    return attention


for _base in SUPPORTED:
    AttentionInterface.register(f"{WRAPPER_PREFIX}{_base}", _wrapper(_base))
    AttentionMaskInterface.register(f"{WRAPPER_PREFIX}{_base}", ALL_MASK_ATTENTION_FUNCTIONS[_base])


# ------------------------------------------------------------------------------------------------ the model
def _base_implementation(model) -> str | None:
    name = _pretrained(model).config._attn_implementation
    return name.removeprefix(WRAPPER_PREFIX) if name else name


def sharing_problem(model) -> str | None:
    """Why this model cannot share its prompts exactly, or None."""
    inner = _pretrained(model)
    config = inner.config.get_text_config()
    base = _base_implementation(inner)
    if base not in SUPPORTED:
        return f"{base} attention takes no attention mask of the shape prompt sharing needs; use sdpa or eager"
    if not inner._can_set_attn_implementation():
        return f"{type(inner).__name__} does not route attention through transformers' attention interface"
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and any(kind != "full_attention" for kind in layer_types):
        return f"{type(inner).__name__} has layers other than full attention ({sorted(set(layer_types))})"
    if layer_types is None and getattr(config, "sliding_window", None) is not None:
        return f"{type(inner).__name__} attends within a sliding window"
    return None


def sharing_mode(requested: bool, *models) -> str:
    """ "on", or "off (why)": the value recorded in the run config (``shared_prefix``)."""
    if not requested:
        return "off (--no_shared_prefix)"
    problem = next((found for found in map(sharing_problem, models) if found), None)
    return f"off ({problem})" if problem else "on"


def enable_shared_prefix(model) -> None:
    """Swap the model's attention for the wrapper of its implementation (same results for every other forward)."""
    inner = _pretrained(model)
    base = _base_implementation(inner)
    if inner.config._attn_implementation != f"{WRAPPER_PREFIX}{base}":
        inner.set_attn_implementation(f"{WRAPPER_PREFIX}{base}")


def _pretrained(model):
    """The transformers model inside PEFT, DistributedDataParallel or DeepSpeed wrappers (DeepSpeed's ``config`` is
    its own, so a model config marks the transformers model)."""
    while not isinstance(getattr(model, "config", None), PretrainedConfig) and hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def _check_every_layer_grouped(model, layout: PrefixLayout) -> None:
    layers = _pretrained(model).config.get_text_config().num_hidden_layers
    if len(layout.calls) != layers:
        raise RuntimeError(
            f"shared-prefix forward: {len(layout.calls)} of {layers} attention layers ran grouped, so the logits would "
            "be wrong; this model's attention does not go through transformers' attention interface as declared. "
            "Run with --no_shared_prefix"
        )


# ------------------------------------------------------------------------------------------------ the forwards
def shared_prefix_logits(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int, trim_logits: bool = True
) -> torch.Tensor | None:
    """Logits for the last ``logits_to_keep`` tokens' predictions, as TRL's forward gives them (before temperature),
    computing each distinct prompt once; None, before any forward, when no two rows share a prompt.

    ``trim_logits``: the model takes ``logits_to_keep`` (as positions here), so the LM head runs on the predicting
    positions only, as in TRL's forward.
    """
    packed = pack_rollouts(input_ids, attention_mask, logits_to_keep)
    if packed is None:
        return None
    predicting = packed.segment_index[:, :-1]
    kwargs = packed.forward_kwargs()
    if trim_logits:
        kwargs["logits_to_keep"] = predicting.reshape(-1)
    logits = model(**kwargs).logits
    _check_every_layer_grouped(model, packed.layout)
    logits = logits[0] if trim_logits else logits[0, predicting.reshape(-1)]
    return logits.view(*predicting.shape, logits.size(-1))


def shared_prefix_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Per-token log-probabilities and entropies of the completions from TRL's fused LM head (GRPO's
    ``model(..., labels=labels, fused_lm_head=True)``), computing each distinct prompt once; zero where the
    completion is padding, as TRL's. None when no two rows share a prompt."""
    packed = pack_rollouts(input_ids, attention_mask, logits_to_keep)
    if packed is None:
        return None
    segment = packed.segment_index
    completion = input_ids[:, -logits_to_keep:].masked_fill(attention_mask[:, -logits_to_keep:] == 0, -100)
    labels = torch.full_like(packed.input_ids, -100)
    labels[0, segment[:, 1:].reshape(-1)] = completion.reshape(-1)
    outputs = model(**packed.forward_kwargs(), labels=labels, fused_lm_head=True)
    _check_every_layer_grouped(model, packed.layout)
    predicting = segment[:, :-1]  # the fused head's outputs are shifted: entry t scores the label at t + 1
    entropy = outputs.entropy[0, predicting] if outputs.entropy is not None else None
    return outputs.log_probs[0, predicting], entropy
