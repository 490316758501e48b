"""The shared-prefix forward gives TRL's logits, loss and gradients while computing each prompt once."""

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


@pytest.mark.parametrize("lora", [False, True])
def test_loss_and_every_gradient_equal_the_unshared_forward(tokenizer, lora):
    from tiny_model import tiny_model

    model = tiny_model(tokenizer).float()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.train()
    ids, mask, keep = _batch(model.config.vocab_size)
    reference = _loss(_unshared(model, ids, mask, keep), ids, mask, keep)
    reference.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    shared = shared_prefix_logits(model, ids, mask, keep)
    loss = _loss(shared, ids, mask, keep)
    loss.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_batch_without_shared_prompts_falls_back_and_a_dropped_cache_is_an_error(tokenizer):
    from tiny_model import tiny_model

    model = tiny_model(tokenizer).float()
    ids, mask, keep = _batch(model.config.vocab_size, prompt_lengths=(7, 4), k=1)
    assert shared_prefix_logits(model, ids, mask, keep) is None  # no two rows share a prompt
    model.gradient_checkpointing_enable()
    model.train()
    ids, mask, keep = _batch(model.config.vocab_size)
    with pytest.raises(RuntimeError, match="did not fill its key/value cache"):
        shared_prefix_logits(model, ids, mask, keep)


def test_the_run_config_says_when_it_is_off_and_why():
    from distil_config import DistilConfig

    def mode(**flags):
        flags = {"gradient_checkpointing": False, **flags}  # TRL's default is on; main.py passes the flag (off)
        return DistilConfig(output_dir="unused", use_cpu=True, report_to="none", **flags).shared_prefix_mode()

    assert mode() == "on"
    assert mode(shared_prefix=False) == "off (--no_shared_prefix)"
    assert mode(gradient_checkpointing=True).startswith("off (gradient checkpointing")


# (CaOPD or SDFT, teacher context, LoRA, rollouts per micro-batch), together covering each choice: 4 rollouts per
# question, so a micro-batch of 2 holds half a group and one of 8 two groups of different prompt lengths.
STEPS = [
    ("sdft", "demo", False, 2),
    ("caopd", "correct_solution", True, 8),
]


@pytest.mark.parametrize(("arm", "context", "lora", "micro_batch"), STEPS)
def test_a_training_step_updates_every_weight_as_the_unshared_forward_does(
    tokenizer, tmp_path, monkeypatch, arm, context, lora, micro_batch
):
    """One SGD step from the same weights and seed, shared and unshared: the rollouts are the same, so every
    weight's change (learning rate x gradient) must be too."""
    from helpers import toy_trainer
    from peft import LoraConfig
    from tiny_model import tiny_model

    import distil_trainer

    shared_forwards = []

    def counted(*args, **kwargs):
        result = shared_prefix_logits(*args, **kwargs)
        shared_forwards.append(result is not None)
        return result

    monkeypatch.setattr(distil_trainer, "shared_prefix_logits", counted)
    changes = {}
    for shared in (True, False):
        model = tiny_model(tokenizer).float()
        start = {name: p.detach().clone() for name, p in model.named_parameters()}
        peft = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False) if lora else None
        trainer = toy_trainer(
            model, tokenizer, tmp_path / str(shared), peft_config=peft, shared_prefix=shared,
            gradient_checkpointing=False, optim="sgd", learning_rate=1e-2, teacher_context_mode=context,
            empirical_calibration=arm == "caopd", per_device_train_batch_size=micro_batch,
            gradient_accumulation_steps=8 // micro_batch, teacher_update_rate=0.0,
        )  # fmt: skip
        trainer.train()
        if shared:
            assert shared_forwards and all(shared_forwards)  # every student and teacher forward shared its prompts
            shared_forwards.clear()
        trained = trainer.accelerator.unwrap_model(trainer.model)
        if lora:
            trained = trained.merge_and_unload()
        changes[shared] = {name: p.detach() - start[name] for name, p in trained.named_parameters()}
    assert shared_forwards == []  # the unshared run never called it
    assert any(change.abs().max() > 0 for change in changes[False].values())
    for name, change in changes[False].items():
        torch.testing.assert_close(changes[True][name], change, rtol=1e-4, atol=1e-7, msg=name)
