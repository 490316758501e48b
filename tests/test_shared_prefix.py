"""The shared-prefix forward gives TRL's logits, loss and gradients while computing each prompt once."""

import copy

import pytest
import torch

from caopd.shared_prefix import prompt_groups, shared_prefix_logits


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


def test_prompt_groups_find_identical_prompts_in_any_order():
    ids = torch.tensor([[0, 5, 6], [1, 2, 3], [0, 5, 6], [1, 2, 3], [0, 5, 7]])
    first, inverse = prompt_groups(ids, (ids > 0).long())
    assert ids[first][inverse].tolist() == ids.tolist() and first.numel() == 3
    assert sorted(first.tolist()) == [0, 1, 4]  # each group's first row


def _count_recomputes(model) -> list[int]:
    """Counts the runs of the first MLP's forward: two per forward pass when the backward recomputes it."""
    mlp = next(module for name, module in model.named_modules() if name.endswith("layers.0.mlp"))
    runs, forward = [], mlp.forward

    def counted(*args, **kwargs):
        runs.append(1)
        return forward(*args, **kwargs)

    mlp.forward = counted
    return runs


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_loss_and_every_gradient_equal_the_unshared_forward(tokenizer, lora, checkpointing):
    from tiny_model import tiny_model

    model = tiny_model(tokenizer).float()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    if checkpointing:  # transformers' default, non-reentrant (TRL's configs leave it so)
        model.gradient_checkpointing_enable()
    runs = _count_recomputes(model)
    model.train()
    ids, mask, keep = _batch(model.config.vocab_size)
    reference = _loss(_unshared(model, ids, mask, keep), ids, mask, keep)
    reference.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    runs.clear()
    shared = shared_prefix_logits(model, ids, mask, keep)
    loss = _loss(shared, ids, mask, keep)
    loss.backward()
    assert len(runs) == (4 if checkpointing else 2)  # prompt and completion passes, each recomputed when checkpointed
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_batches_and_models_that_cannot_share_get_unshared_logits(tokenizer, caplog):
    from tiny_model import tiny_model

    model = tiny_model(tokenizer).float()
    ids, mask, keep = _batch(model.config.vocab_size, prompt_lengths=(7, 4), k=1)
    assert shared_prefix_logits(model, ids, mask, keep) is None  # no two rows share a prompt: the caller's forward
    ids, mask, keep = _batch(model.config.vocab_size)
    expected = _unshared(model, ids, mask, keep)
    forward = model.forward
    model.forward = lambda *args, past_key_values=None, **kwargs: forward(*args, **kwargs)  # ignores the cache
    torch.testing.assert_close(shared_prefix_logits(model, ids, mask, keep), expected, rtol=1e-5, atol=1e-6)
    assert "does not fill the key/value cache" in caplog.text


class _Wrapper(torch.nn.Module):
    """Stands in for DistributedDataParallel: no ``config``, the model as ``module``, and a count of its forwards
    (DDP runs collectives in each, so every process must call it equally often)."""

    def __init__(self, module):
        super().__init__()
        self.module, self.calls = module, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)


def test_a_wrapped_model_runs_both_passes_in_one_forward_of_its_wrapper(tokenizer):
    from tiny_model import tiny_model

    model = tiny_model(tokenizer).float()
    ids, mask, keep = _batch(model.config.vocab_size)
    wrapped = _Wrapper(model)
    logits = shared_prefix_logits(wrapped, ids, mask, keep)
    assert wrapped.calls == 1
    torch.testing.assert_close(logits, _unshared(model, ids, mask, keep), rtol=1e-5, atol=1e-6)
    assert "forward" not in model.__dict__  # the model's own forward is back


def test_the_run_config_says_when_it_is_off_and_why():
    from distil_config import DistilConfig

    def mode(**flags):
        flags = {"gradient_checkpointing": False, **flags}  # TRL's default is on; main.py passes the flag (off)
        return DistilConfig(output_dir="unused", use_cpu=True, report_to="none", **flags).shared_prefix_mode()

    assert mode() == "on"
    assert mode(gradient_checkpointing=True) == "on"
    assert mode(shared_prefix=False) == "off (--no_shared_prefix)"
    reentrant = mode(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})
    assert reentrant.startswith("off (reentrant gradient checkpointing")


def test_the_trainer_turns_it_off_under_deepspeed_and_fsdp_from_the_accelerate_config(tokenizer, tmp_path, monkeypatch):
    from helpers import toy_trainer
    from tiny_model import tiny_model

    import caopd.step

    trainer = toy_trainer(tiny_model(tokenizer).float(), tokenizer, tmp_path)
    assert trainer.shared_prefix_mode() == "on"
    trainer.is_fsdp_enabled = True  # as accelerate's FSDP plugin sets it, with no flag in the training arguments
    assert trainer.shared_prefix_mode() == "off (FSDP: not yet tested)"
    trainer.is_deepspeed_enabled = True
    assert trainer.shared_prefix_mode() == "off (DeepSpeed: not yet tested)"

    def refuse(*args, **kwargs):
        raise AssertionError("shared-prefix forward called while off")

    monkeypatch.setattr(caopd.step, "shared_prefix_logits", refuse)
    ids, mask, keep = _batch(trainer.model.config.vocab_size)
    logits = trainer._forward_logits(trainer.model, ids, mask, keep)
    torch.testing.assert_close(logits, _unshared(trainer.model, ids, mask, keep) / trainer.temperature)


# (CaOPD or SDFT, teacher context, LoRA, rollouts per micro-batch, gradient checkpointing), together covering each
# choice: 4 rollouts per question, so a micro-batch of 2 holds half a group and one of 8 two groups of different
# prompt lengths.
STEPS = [
    ("sdft", "demo", False, 2, True),
    ("caopd", "correct_solution", True, 8, False),
]


@pytest.mark.parametrize(("arm", "context", "lora", "micro_batch", "checkpointing"), STEPS)
def test_a_training_step_updates_every_weight_as_the_unshared_forward_does(
    tokenizer, tmp_path, monkeypatch, arm, context, lora, micro_batch, checkpointing
):
    """One SGD step from the same weights and seed, shared and unshared: the rollouts are the same, so every
    weight's change (learning rate x gradient) must be too."""
    from helpers import toy_trainer
    from peft import LoraConfig
    from tiny_model import tiny_model

    import caopd.step

    shared_forwards = []

    def counted(*args, **kwargs):
        result = shared_prefix_logits(*args, **kwargs)
        shared_forwards.append(result is not None)
        return result

    monkeypatch.setattr(caopd.step, "shared_prefix_logits", counted)
    pristine, changes = copy.deepcopy(tokenizer), {}
    for shared in (True, False):
        tokenizer = copy.deepcopy(pristine)  # a trainer sets the pad token, which the next tiny model would take up
        model = tiny_model(tokenizer).float()
        start = {name: p.detach().clone() for name, p in model.named_parameters()}
        peft = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False) if lora else None
        trainer = toy_trainer(
            model, tokenizer, tmp_path / str(shared), peft_config=peft, shared_prefix=shared,
            gradient_checkpointing=checkpointing, optim="sgd", learning_rate=1e-2, teacher_context_mode=context,
            empirical_calibration=arm == "caopd", per_device_train_batch_size=micro_batch,
            gradient_accumulation_steps=8 // micro_batch, teacher_update_rate=0.0,
        )  # fmt: skip
        trainer.train()
        if shared:
            assert shared_forwards and all(shared_forwards)  # every student and teacher forward shared its prompts
            shared_forwards.clear()
        trained = trainer.accelerator.unwrap_model(trainer.model)
        assert trained.is_gradient_checkpointing == checkpointing
        if lora:
            trained = trained.merge_and_unload()
        changes[shared] = {name: p.detach() - start[name] for name, p in trained.named_parameters()}
    assert shared_forwards == []  # the unshared run never called it
    assert any(change.abs().max() > 0 for change in changes[False].values())
    for name, change in changes[False].items():
        torch.testing.assert_close(changes[True][name], change, rtol=1e-4, atol=1e-7, msg=name)
