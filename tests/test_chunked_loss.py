"""The chunked loss (``caopd.chunked_loss``) is TRL's loss: the same value, every gradient and every metric, for each
distillation mode, with and without the shared-prefix forward, with the rollout importance ratio on."""

import pytest
import torch
from helpers import toy_trainer
from tiny_model import tiny_model

from caopd.chunked_loss import chunking_problem

MODES = ("topk_logits", "full_logits", "sampled_token")
METRICS = (
    "entropy",
    "caopd/loss_confidence",
    "caopd/loss_reasoning",
    "caopd/is_ratio_mean",
    "self_distillation/distillation_loss",
)


def _inputs(vocab: int, rows: int = 4, prompt: int = 5, completion: int = 7) -> dict[str, torch.Tensor]:
    """Two prompts, each twice (so the shared-prefix forward packs them), right-padded completions, a teacher
    context of its own, rollout log-probs near the current ones and a rewritten tail that was never sampled."""
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, vocab, (rows // 2, prompt), generator=generator).repeat_interleave(2, dim=0)
    completion_ids = torch.randint(3, vocab, (rows, completion), generator=generator)
    completion_mask = torch.ones(rows, completion, dtype=torch.long)
    completion_mask[1, -2:] = 0
    sampled = torch.ones(rows, completion, dtype=torch.long)
    sampled[:, -3:] = 0
    confidence = torch.zeros(rows, completion, dtype=torch.long)
    confidence[:, -3:] = 1
    return {
        "prompt_ids": prompts,
        "prompt_mask": torch.ones_like(prompts),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "teacher_input_ids": torch.cat([torch.randint(3, vocab, (rows, 9), generator=generator), completion_ids], 1),
        "teacher_attention_mask": torch.ones(rows, 9 + completion, dtype=torch.long),
        "old_per_token_logps": -torch.rand(rows, completion, generator=generator) * 5,
        "sampled_mask": sampled,
        "confidence_mask": confidence,
    }


@pytest.mark.parametrize("shared", [True, False], ids=["shared-prefix", "unshared"])
@pytest.mark.parametrize("mode", MODES)
def test_the_chunked_loss_is_trls_loss_with_every_gradient(tokenizer, tmp_path, mode, shared):
    model = tiny_model(tokenizer).float()
    trainer = toy_trainer(
        model, tokenizer, tmp_path, distillation_mode=mode, distillation_topk=5, shared_prefix=shared,
        loss_chunk_size=3, num_loss_tokens_to_skip=1, distillation_is_clip=2.0,
    )  # fmt: skip
    assert trainer.loss_chunking_mode() == "on"
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a teacher far from the student: a divergence whose float32 rounding is relatively small
        for parameter in trainer.teacher_model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the Trainer's loop, which this calls around
    inputs = _inputs(len(tokenizer))
    parameters = [p for p in trainer.model.parameters() if p.requires_grad]
    results = {}
    for chunked in (True, False):
        trainer.chunks_loss = chunked
        trainer._metrics["train"].clear()
        loss = trainer.compute_loss(trainer.model, inputs)
        gradients = torch.autograd.grad(loss, parameters)
        logged = {name: trainer._metrics["train"][name][-1] for name in METRICS}
        results[chunked] = (loss.detach(), gradients, logged)
    (loss, gradients, logged), (whole_loss, whole_gradients, whole_logged) = results[True], results[False]
    assert whole_loss.abs() > 0
    torch.testing.assert_close(loss, whole_loss, rtol=1e-5, atol=0)
    for gradient, whole in zip(gradients, whole_gradients, strict=True):  # relative to each gradient's norm
        assert (gradient - whole).norm() <= 1e-5 * whole.norm()
    assert logged == pytest.approx(whole_logged, rel=1e-5)


def test_where_it_cannot_be_exact_it_is_off_and_says_why(tokenizer, tmp_path):
    model = tiny_model(tokenizer).float()
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.lm_head.out_features))
    assert "bias" in chunking_problem(model)
    capped = tiny_model(tokenizer)
    capped.config.final_logit_softcapping = 30.0  # Gemma 2's: a tanh after the head
    assert chunking_problem(capped) == "it soft-caps its logits after the head"
    trainer = toy_trainer(model, tokenizer, tmp_path)
    assert trainer.loss_chunking_mode().startswith("off (its output head has a bias")
    assert toy_trainer(tiny_model(tokenizer), tokenizer, tmp_path, chunked_loss=False).loss_chunking_mode() == (
        "off (--no-chunked_loss)"
    )
    assert toy_trainer(tiny_model(tokenizer), tokenizer, tmp_path, backbone="sdpo").loss_chunking_mode() == (
        "off (not yet on this backbone)"
    )
