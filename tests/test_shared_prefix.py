"""The shared-prefix forward gives TRL's logits, loss and gradients while computing each prompt once, under
gradient checkpointing of either kind, with LoRA, on every attention implementation it takes and every backbone."""

import copy
import json

import pytest
import torch
from conftest import accelerate_launch

from caopd.shared_prefix import (
    enable_shared_prefix,
    pack_rollouts,
    prompt_groups,
    shared_prefix_logits,
    shared_prefix_logps,
    sharing_mode,
    sharing_problem,
)


def _batch(vocab: int, prompt_lengths=(7, 4), k: int = 3, completion: int = 5, seed: int = 0):
    """Left-padded prompts of different lengths, each repeated K times, with right-padded completions."""
    generator = torch.Generator().manual_seed(seed)
    width = max(prompt_lengths)
    ids, mask = [], []
    for length in prompt_lengths:
        prompt = torch.randint(3, vocab, (length,), generator=generator)
        for row in range(k):
            kept = completion - row % 3  # completions of different lengths, padded on the right
            tokens = torch.randint(3, vocab, (completion,), generator=generator)
            ids.append(torch.cat([torch.zeros(width - length, dtype=torch.long), prompt, tokens]))
            mask.append(
                torch.cat(
                    [torch.zeros(width - length), torch.ones(length), torch.ones(kept), torch.zeros(completion - kept)]
                )
            )
    return torch.stack(ids), torch.stack(mask).long(), completion


def _unshared(model, ids, mask, keep):
    """TRL's forward (``SDFTTrainer._forward_logits`` before the temperature)."""
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1, :][:, -keep:, :]


def _loss(logits, ids, mask, keep):
    completion, completion_mask = ids[:, -keep:], mask[:, -keep:].float()
    token_logps = torch.log_softmax(logits.float(), -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
    return -(token_logps * completion_mask).sum() / completion_mask.sum()


def _model(tokenizer, attention="sdpa", lora=False, checkpointing="off"):
    from tiny_model import tiny_model

    model = tiny_model(tokenizer).float()
    model.set_attn_implementation(attention)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    if checkpointing != "off":
        model.gradient_checkpointing_enable({"use_reentrant": checkpointing == "reentrant"})
        model.enable_input_require_grads()  # as the Trainer does for reentrant checkpointing of a PEFT model
    return model


def test_prompt_groups_find_identical_prompts_in_any_order():
    ids = torch.tensor([[0, 5, 6], [1, 2, 3], [0, 5, 6], [1, 2, 3], [0, 5, 7]])
    first, inverse = prompt_groups(ids, (ids > 0).long())
    assert ids[first][inverse].tolist() == ids.tolist() and first.numel() == 3
    assert sorted(first.tolist()) == [0, 1, 4]  # each group's first row


def test_the_packed_sequence_holds_each_prompt_once_at_trl_positions():
    ids, mask, keep = _batch(50, prompt_lengths=(3, 2), k=2, completion=2)
    packed = pack_rollouts(ids, mask, keep)
    # prompts without their last token (2 and 1 real tokens), then per row its last prompt token and completion
    assert packed.input_ids.shape == (1, 2 + 1 + 4 * 3)
    # the 3-token prompt's first two tokens at 0 and 1; the left-padded 2-token prompt's first token at 1
    assert sorted(packed.position_ids[0, :3].tolist()) == [0, 1, 1]
    assert packed.position_ids[0, 3:].tolist() == [2, 3, 4] * 4
    assert packed.input_ids[0, 3:6].tolist() == ids[0, 2:].tolist()
    assert packed.segment_index.tolist()[1] == [6, 7, 8]
    assert pack_rollouts(ids[[0, 2]], mask[[0, 2]], keep) is None  # no two rows share a prompt: TRL's forward


CASES = [
    (attention, lora, checkpointing)
    for attention in ("sdpa", "eager")
    for lora in (False, True)
    for checkpointing in ("off", "non-reentrant", "reentrant")
]


@pytest.mark.parametrize(("attention", "lora", "checkpointing"), CASES)
def test_logits_loss_and_every_gradient_equal_the_unshared_forward(tokenizer, attention, lora, checkpointing):
    model = _model(tokenizer, attention, lora, checkpointing)
    model.train()
    ids, mask, keep = _batch(model.config.vocab_size)
    expected_logits = _unshared(model, ids, mask, keep)
    reference = _loss(expected_logits, ids, mask, keep)
    reference.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    assert sharing_problem(model) is None
    enable_shared_prefix(model)
    logits = shared_prefix_logits(model, ids, mask, keep)
    loss = _loss(logits, ids, mask, keep)
    loss.backward()
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-6)  # padding positions included
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(_unshared(model, ids, mask, keep), expected_logits)  # other forwards: as before


def test_the_fused_log_probabilities_equal_trl_grpo(tokenizer):
    from trl.trainer.utils import add_fused_lm_head

    model = _model(tokenizer)
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    ids, mask, keep = _batch(model.config.vocab_size)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-keep] = -100
    expected = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    enable_shared_prefix(model)
    logps, entropy = shared_prefix_logps(model, ids, mask, keep)
    torch.testing.assert_close(logps, expected.log_probs[:, -keep:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(entropy, expected.entropy[:, -keep:], rtol=1e-5, atol=1e-6)


def test_what_cannot_share_says_why(tokenizer, monkeypatch):
    model = _model(tokenizer)
    assert sharing_mode(True, model) == "on" and sharing_mode(False, model) == "off (--no_shared_prefix)"
    model.config._attn_implementation_internal = "flash_attention_2"
    assert sharing_mode(True, model).startswith("off (flash_attention_2 attention takes no attention mask")
    model.config._attn_implementation_internal = "sdpa"
    model.config.sliding_window = 16
    assert sharing_mode(True, model) == "off (LlamaForCausalLM attends within a sliding window)"
    del model.config.sliding_window
    monkeypatch.setattr(type(model), "_can_set_attn_implementation", classmethod(lambda cls: False))
    assert "does not route attention through transformers' attention interface" in sharing_mode(True, model)


def test_a_model_that_bypasses_the_wrapper_is_caught_not_trained_on_wrong_logits(tokenizer):
    model = _model(tokenizer)
    ids, mask, keep = _batch(model.config.vocab_size)
    with pytest.raises(RuntimeError, match="0 of 2 attention layers ran grouped"):
        shared_prefix_logits(model, ids, mask, keep)  # never enabled: the layers ran plain attention


class _Wrapper(torch.nn.Module):
    """Stands in for DistributedDataParallel: no ``config``, the model as ``module``, and a count of its forwards
    (DDP runs collectives in each, so every process must call it equally often)."""

    def __init__(self, module):
        super().__init__()
        self.module, self.calls = module, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)


def test_a_wrapped_model_runs_one_forward_of_its_wrapper_and_each_layer_once(tokenizer):
    model = _model(tokenizer)
    ids, mask, keep = _batch(model.config.vocab_size)
    expected = _unshared(model, ids, mask, keep)
    mlp = model.model.layers[0].mlp
    tokens, forward = [], mlp.forward
    mlp.forward = lambda hidden: tokens.append(hidden.shape[:2].numel()) or forward(hidden)
    wrapped = _Wrapper(model)
    enable_shared_prefix(wrapped)
    logits = shared_prefix_logits(wrapped, ids, mask, keep)
    assert wrapped.calls == 1
    assert tokens == [7 - 1 + 4 - 1 + 6 * (keep + 1)]  # each prompt once (less its last token), every segment once
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)


def test_the_trainer_records_when_it_is_off_and_why(tokenizer, tmp_path):
    from helpers import toy_trainer

    trainer = toy_trainer(_model(tokenizer), tokenizer, tmp_path, gradient_checkpointing=True,
                          gradient_checkpointing_kwargs={"use_reentrant": True})  # fmt: skip
    assert trainer.shared_prefix_mode() == "on" and trainer.shares_prefix  # reentrant checkpointing included
    off = toy_trainer(_model(tokenizer), tokenizer, tmp_path, shared_prefix=False)
    assert off.shared_prefix_mode() == "off (--no_shared_prefix)" and not off.shares_prefix
    assert off.model.config._attn_implementation == "sdpa"  # left as loaded


# (backbone, arm, teacher context, LoRA, rollouts per micro-batch, gradient checkpointing), together covering each
# choice: 4 rollouts per question, so a micro-batch of 2 holds half a group and one of 8 two groups of different
# prompt lengths.
STEPS = [
    ("sdft", "sdft", "demo", False, 2, "reentrant"),
    ("sdft", "caopd", "correct_solution", True, 8, "off"),
    ("sdpo", "caopd", None, False, 8, "non-reentrant"),
    ("grpo", None, None, False, 8, "non-reentrant"),
]


@pytest.mark.parametrize(("backbone", "arm", "context", "lora", "micro_batch", "checkpointing"), STEPS)
def test_a_training_step_updates_every_weight_as_the_unshared_forward_does(
    tokenizer, tmp_path, monkeypatch, backbone, arm, context, lora, micro_batch, checkpointing
):
    """One SGD step from the same weights and seed, shared and unshared: the rollouts are the same, so every
    weight's change (learning rate x gradient) must be too."""
    from helpers import toy_trainer
    from peft import LoraConfig
    from tiny_model import tiny_model

    import caopd.shared_prefix

    packed = []
    original_pack = caopd.shared_prefix.pack_rollouts

    def counted(*args, **kwargs):
        result = original_pack(*args, **kwargs)
        packed.append(result is not None)
        return result

    monkeypatch.setattr(caopd.shared_prefix, "pack_rollouts", counted)
    pristine, changes = copy.deepcopy(tokenizer), {}
    settings = {"optim": "sgd", "learning_rate": 1e-2, "per_device_train_batch_size": micro_batch}
    settings["gradient_accumulation_steps"] = 8 // micro_batch
    settings["gradient_checkpointing"] = checkpointing != "off"  # TRL's configs default to on
    if checkpointing != "off":
        settings["gradient_checkpointing_kwargs"] = {"use_reentrant": checkpointing == "reentrant"}
    if backbone != "grpo":
        settings |= {"teacher_update_rate": 0.0, "empirical_calibration": arm == "caopd"}
    if context:
        settings["teacher_context_mode"] = context
    for shared in (True, False):
        tokenizer = copy.deepcopy(pristine)  # a trainer sets the pad token, which the next tiny model would take up
        model = tiny_model(tokenizer).float()
        start = {name: p.detach().clone() for name, p in model.named_parameters()}
        peft = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False) if lora else None
        trainer = toy_trainer(
            model, tokenizer, tmp_path / str(shared), peft_config=peft, shared_prefix=shared, backbone=backbone,
            **settings,
        )  # fmt: skip
        trainer.train()
        if shared:
            assert packed and all(packed)  # every forward of the step shared its prompts
            packed.clear()
        trained = trainer.accelerator.unwrap_model(trainer.model)
        assert trained.is_gradient_checkpointing == (checkpointing != "off")
        if lora:
            trained = trained.merge_and_unload()
        changes[shared] = {name: p.detach() - start[name] for name, p in trained.named_parameters()}
    assert packed == []  # the unshared run never packed
    assert any(change.abs().max() > 0 for change in changes[False].values())
    for name, change in changes[False].items():
        torch.testing.assert_close(changes[True][name], change, rtol=1e-4, atol=1e-7, msg=name)


SHARDED = {
    "zero3": ["--use_deepspeed", "--zero_stage", "3", "--zero3_init_flag", "false", "--zero3_save_16bit_model", "true"],
    "fsdp": [
        "--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
        "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer", "--fsdp_state_dict_type", "FULL_STATE_DICT",
        "--fsdp_cpu_ram_efficient_loading", "false",
    ],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sharding", "backbone", "checkpointing"), [("zero3", "sdft", "reentrant"), ("fsdp", "grpo", "non-reentrant")]
)
def test_a_sharded_step_updates_every_weight_as_the_unshared_forward_does(tmp_path, sharding, backbone, checkpointing):
    """ZeRO-3 and FSDP on two CPU processes (fp32): one SGD step with the shared prefix and one without, from the same
    saved weights, end with the same weights."""
    import subprocess

    from conftest import ROOT
    from safetensors.torch import load_file
    from tiny_model import save_tiny_model

    model = save_tiny_model(tmp_path / "model")
    weights = {}
    for forward in ("shared", "unshared"):
        command = accelerate_launch(*SHARDED[sharding], "--num_processes", "2")
        command += [str(ROOT / "tests" / "mp_shared_prefix.py"), str(model), str(tmp_path / forward), forward]
        finished = subprocess.run([*command, backbone, checkpointing], capture_output=True, text=True, timeout=600)
        assert finished.returncode == 0, finished.stderr[-3000:]
        records = [json.loads((tmp_path / forward / f"packed_rank{rank}.json").read_text()) for rank in (0, 1)]
        if forward == "shared":  # recorded on, and every forward of both processes packed its prompts
            assert all(r["mode"] == "on" and r["packed"] and all(r["packed"]) for r in records), records
        else:
            assert [r["packed"] for r in records] == [[], []]
        weights[forward] = load_file(str(tmp_path / forward / "model" / "model.safetensors"))
    initial = load_file(str(model / "model.safetensors"))
    assert any(not torch.equal(weights["unshared"][name], initial[name]) for name in initial)  # the step moved them
    for name, tensor in weights["unshared"].items():
        torch.testing.assert_close(weights["shared"][name], tensor, rtol=1e-5, atol=1e-7, msg=name)
