"""Sampling with one prefill per prompt must give what plain ``generate(num_return_sequences=k)`` gives."""

import torch

from caopd.generation import generate_with_shared_prefill


def _encode(tokenizer, texts):
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def test_shared_prefill_matches_plain_generate_on_padded_prompts(model, tokenizer):
    encoded = _encode(tokenizer, ["What is 2 + 3? Answer:", "Hi"])  # different lengths: left padding in play
    options = {"do_sample": False, "max_new_tokens": 6, "pad_token_id": tokenizer.pad_token_id}
    options |= {"output_scores": True, "return_dict_in_generate": True}
    with torch.no_grad():
        plain = model.generate(**encoded, **options)
    repeated = {**options, "num_return_sequences": 3}
    shared = generate_with_shared_prefill(model, encoded.input_ids, encoded.attention_mask, repeated)
    assert shared.sequences.shape == (6, encoded.input_ids.shape[1] + 6)
    assert torch.equal(shared.sequences, plain.sequences.repeat_interleave(3, 0))
    for step_shared, step_plain in zip(shared.scores, plain.scores, strict=True):  # same logits, not just argmax
        torch.testing.assert_close(step_shared, step_plain.repeat_interleave(3, 0), atol=1e-5, rtol=1e-4)


def test_shared_prefill_samples_differ_within_a_prompt(model, tokenizer):
    encoded = _encode(tokenizer, ["Count: one two"])
    options = {"do_sample": True, "temperature": 1.0, "max_new_tokens": 8, "num_return_sequences": 4}
    torch.manual_seed(0)
    output = generate_with_shared_prefill(model, encoded.input_ids, encoded.attention_mask, options)
    new_tokens = {tuple(row[encoded.input_ids.shape[1] :].tolist()) for row in output}
    assert output.shape[0] == 4 and len(new_tokens) > 1  # the cache is repeated, not the sample


def test_responses_say_whether_the_length_limit_cut_them(tokenizer, tmp_path):
    from tiny_model import tiny_model

    from caopd.generation import generate, resolve_sampling

    model = tiny_model(tokenizer)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: greedy decoding picks token 0 (<|endoftext|>) every time
    prompts = [tokenizer("Hello", add_special_tokens=False)["input_ids"], [5, 6, 7]]
    outcomes = {}
    for name, stops in (("runs_on", [tokenizer.eos_token_id]), ("stops", [tokenizer.eos_token_id, 0])):
        model.generation_config.eos_token_id = stops  # with token 0 among the end tokens, it ends at once
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        greedy, _ = resolve_sampling({"temperature": 0}, str(tmp_path / name), 3, 2, 0)  # stops: EOS + the model's
        outcomes[name] = [r.cut_by_length for (r,) in generate(str(tmp_path / name), prompts, greedy)]
    assert outcomes == {"runs_on": [True, True], "stops": [False, False]}
