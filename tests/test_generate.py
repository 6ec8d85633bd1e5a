"""The transformers generator: batching must not change what a prompt gets; log-probs are the model's own."""

import math

import pytest
import torch

from rlaif.config import GenerateConfig, ModelConfig
from rlaif.generate.hf import TransformersGenerator, chat_prompt, token_logprobs
from rlaif.models import load_model, load_tokenizer


def test_samples_are_complete_seeded_and_carry_logprobs(tiny_model):
    cfg = GenerateConfig(max_new_tokens=10, batch_size=4, temperature=1.0, top_p=1.0)
    gen = TransformersGenerator(tiny_model, cfg, ModelConfig(policy=tiny_model))
    prompts = ["How do I bake bread?", "Say hello.", "Which response is less harmful? " * 3]
    out = gen.generate(prompts, n=2, seed=3)
    assert [len(g) for g in out] == [2, 2, 2]
    for group in out:
        for s in group:
            assert 0 <= s.tokens <= 10
            assert s.finished or s.tokens == 10
            assert len(s.logprobs) == s.tokens + s.finished
            assert all(lp <= 0 and math.isfinite(lp) for lp in s.logprobs)
    again = gen.generate(prompts, n=2, seed=3)
    assert [[s.text for s in g] for g in again] == [[s.text for s in g] for g in out]


def test_token_logprobs_match_a_plain_forward(tiny_model):
    tok = load_tokenizer(tiny_model)
    model = load_model(tiny_model)
    p1 = tok(chat_prompt(tok, "hi"), add_special_tokens=False).input_ids
    p2 = tok(chat_prompt(tok, "How do I bake bread? Mix flour"), add_special_tokens=False).input_ids
    r1, r2 = [5, 9, 11], [7, 8]
    got = token_logprobs(model, [p1, p2], [r1, r2], tok.pad_token_id, "cpu", chunk=2)
    for p, r, lps in ((p1, r1, got[0]), (p2, r2, got[1])):
        with torch.inference_mode():
            logits = model(torch.tensor([p + r])).logits[0]
        want = [torch.log_softmax(logits[len(p) - 1 + t], -1)[tok_id].item() for t, tok_id in enumerate(r)]
        assert lps == pytest.approx(want, abs=1e-4)
