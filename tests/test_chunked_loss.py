"""The chunked loss (``caopd.chunked_loss``) is TRL's loss: the same value, every gradient and every metric, on both
distillation backbones (SDPO's with its policy term blended in), for each distillation mode, with and without the
shared-prefix forward, with the rollout importance ratio on."""

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
        "advantages": torch.tensor([1.0, -1.0, 0.5, -0.5]),  # SDPO's policy term
        "self_distillation_mask": torch.tensor([1, 1, 0, 1]),  # SDPO: row 2 has no successful sibling to show
    }


@pytest.mark.parametrize("backbone", ["sdft", "sdpo"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared-prefix", "unshared"])
@pytest.mark.parametrize("mode", MODES)
def test_the_chunked_loss_is_trls_loss_with_every_gradient(tokenizer, tmp_path, mode, shared, backbone):
    model = tiny_model(tokenizer).float()
    blend = {"distillation_weight": 0.5} if backbone == "sdpo" else {}  # the policy term on the chunks' log-probs
    trainer = toy_trainer(
        model, tokenizer, tmp_path, backbone=backbone, distillation_mode=mode, distillation_topk=5,
        shared_prefix=shared, loss_chunk_size=3, num_loss_tokens_to_skip=1, distillation_is_clip=2.0, **blend,
    )  # fmt: skip
    metrics = METRICS + (("self_distillation/policy_loss",) if blend else ())
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
        logged = {name: trainer._metrics["train"][name][-1] for name in metrics}
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
    policy_only = toy_trainer(tiny_model(tokenizer), tokenizer, tmp_path, backbone="sdpo", distillation_weight=0.0)
    assert policy_only.loss_chunking_mode().startswith("off (--distillation_weight 0")


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_sdpos_policy_term_from_log_probs_is_trls_from_logits(tokenizer, tmp_path, loss_type, level):
    trainer = toy_trainer(
        tiny_model(tokenizer),
        tokenizer,
        tmp_path,
        backbone="sdpo",
        loss_type=loss_type,
        importance_sampling_level=level,
    )
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 7, len(tokenizer), generator=generator, requires_grad=True)
    inputs = {key: value for key, value in _inputs(len(tokenizer)).items() if key != "sampled_mask"}
    logps = torch.log_softmax(logits, -1).gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)
    ours = trainer.policy_loss_from_logps(inputs, logps)
    theirs = super(type(trainer), trainer)._compute_policy_loss(inputs, logits)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    grad_ours, grad_theirs = (torch.autograd.grad(loss, logits)[0] for loss in (ours, theirs))
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-prefix", "unshared"])
def test_grpos_log_probs_come_from_trls_fused_head_without_whole_logits(tokenizer, tmp_path, shared):
    """GRPO's chunking is TRL's: its per-token log-probs (and the shared-prefix path's) go through TRL's fused LM
    head, which never calls the head module over the positions, and equal the whole logits' log-softmax."""
    trainer = toy_trainer(tiny_model(tokenizer).float(), tokenizer, tmp_path, backbone="grpo", shared_prefix=shared)
    assert trainer.loss_chunking_mode() == "on (TRL's fused LM head)"
    inputs = _inputs(len(tokenizer))
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    keep = inputs["completion_ids"].size(1)
    head_calls = []
    hook = trainer.model.get_output_embeddings().register_forward_hook(lambda *_: head_calls.append(1))
    try:
        logps, entropy, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep, None, True)
    finally:
        hook.remove()
    assert head_calls == [] and entropy is not None
    logits = trainer.model(input_ids=ids, attention_mask=mask).logits[:, -keep - 1 : -1] / trainer.temperature
    expected = torch.log_softmax(logits, -1).gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)
    completion = inputs["completion_mask"].bool()
    torch.testing.assert_close(logps[completion], expected[completion], rtol=1e-5, atol=1e-5)
