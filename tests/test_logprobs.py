"""Response log-probs with the LM head applied at the response tokens alone (rlaif/logprobs.py): the same figures
and gradients as the model's forward, the head's work limited to the response tokens, and a model whose forward
changes its logits after the head keeps the forward."""

from __future__ import annotations

import pytest
import torch

from rlaif import logprobs
from rlaif.losses import sequence_logps
from rlaif.models import load_model, load_tokenizer
from rlaif.stages.dpo import collate, encode_pair
from tests.test_train import PAIRS


def _batch(tiny_model):
    tok = load_tokenizer(tiny_model)
    prompts = ["Hi?", "How do I bake bread at home, step by step, with what I have?", "Is this safe?"]
    data = [encode_pair(tok, q, p["chosen"], p["rejected"], 64) for q, p in zip(prompts, PAIRS, strict=True)]
    ids, attn, mask = collate(data, tok.pad_token_id)
    return ids, attn, mask, min(min(e.chosen_start, e.rejected_start) for e in data)


def _forward_logps(model, ids, attn, mask):
    return sequence_logps(model(input_ids=ids, attention_mask=attn).logits, ids, mask)


def _head_rows(model) -> list:
    rows = []
    model.get_output_embeddings().register_forward_hook(
        lambda m, a, out: rows.append(a[0].reshape(-1, a[0].shape[-1]).shape[0])
    )
    return rows


def test_the_head_alone_gives_the_forwards_log_probs_and_gradients_at_the_response_tokens_only(tiny_model):
    model = load_model(tiny_model)
    ids, attn, mask, start = _batch(tiny_model)
    assert len(set(mask.argmax(1).tolist())) > 1 and (attn == 0).any()  # rows start and end apart: padding

    expected = _forward_logps(model, ids, attn, mask)
    expected.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    rows = _head_rows(model)
    got = logprobs.response_logps(model, ids, attn, mask, start)
    assert model.__dict__[logprobs.CHECKED] is True
    rows.clear()  # the check's own forwards
    got = logprobs.response_logps(model, ids, attn, mask, start)
    got.sum().backward()
    assert torch.allclose(got, expected, atol=1e-5)
    for n, g in grads.items():
        assert torch.allclose(model.get_parameter(n).grad, g, atol=1e-5, rtol=1e-4), n
    # the head ran once, over the response tokens (the labels the mask covers after the shift) and no more
    assert rows == [int(mask[:, 1:].sum())]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_model_that_changes_its_logits_after_the_head_keeps_its_forward(tiny_model, dtype):
    model = load_model(tiny_model, "cpu", dtype)
    ids, attn, mask, start = _batch(tiny_model)
    assert logprobs.head_alone(model, ids, attn, start)  # as it comes: the head alone gives its logits
    model = load_model(tiny_model, "cpu", dtype)
    ids, attn, mask, start = _batch(tiny_model)
    forward = model.forward

    def capped(*args, **kwargs):  # as Gemma 2 caps its logits after the head
        out = forward(*args, **kwargs)
        out.logits = 3.0 * torch.tanh(out.logits / 3.0)
        return out

    model.forward = capped
    expected = _forward_logps(model, ids, attn, mask)
    got = logprobs.response_logps(model, ids, attn, mask, start)
    assert model.__dict__[logprobs.CHECKED] is False
    assert torch.allclose(got, expected, atol=1e-5)


def test_sharded_training_keeps_the_forward(tiny_model, monkeypatch):
    model = load_model(tiny_model)
    ids, attn, mask, start = _batch(tiny_model)
    monkeypatch.setattr(logprobs, "sharded_training", lambda: True)
    rows = _head_rows(model)
    got = logprobs.response_logps(model, ids, attn, mask, start)
    assert rows == [ids.shape[0] * (ids.shape[1] - start + 1)]  # the forward's kept positions, every row
    assert torch.allclose(got, _forward_logps(model, ids, attn, mask), atol=1e-5)
    assert logprobs.CHECKED not in model.__dict__


@pytest.mark.parametrize("train_mode", [True, False])
def test_the_check_leaves_the_models_mode_as_it_was(tiny_model, train_mode):
    model = load_model(tiny_model)
    model.train(train_mode)
    ids, attn, mask, start = _batch(tiny_model)
    logprobs.response_logps(model, ids, attn, mask, start)
    assert model.training is train_mode


@pytest.mark.parametrize("hidden", [False, True])
def test_rl_token_log_probs_and_states_take_the_head_at_the_response_tokens_only(tiny_model, hidden):
    """The RL stage's per-token log-probs (and, for PPO's value head, the final hidden states) as the forward's,
    with the head run over the response tokens alone."""
    from rlaif.stages.rl import response_logps

    tok = load_tokenizer(tiny_model)
    rows = []
    for prompt, answer in [
        ("Hi?", "Hello there."),
        ("How do I bake bread at home?", "Mix flour and water, then bake."),
    ]:
        p = tok(prompt).input_ids
        rows.append((p + tok(answer, add_special_tokens=False).input_ids, len(p)))

    plain = load_model(tiny_model)
    plain.__dict__[logprobs.CHECKED] = False  # the forward's logits
    expected = response_logps(plain, rows, tok.pad_token_id, hidden=hidden)
    model = load_model(tiny_model)
    response_logps(model, rows, tok.pad_token_id)  # the check's forwards
    head_rows = _head_rows(model)
    got = response_logps(model, rows, tok.pad_token_id, hidden=hidden)
    assert model.__dict__[logprobs.CHECKED] is True
    assert head_rows == [len(seq) - start for seq, start in rows]  # once a row, over its response tokens
    pairs = zip(*expected, *got, strict=True) if hidden else zip(expected, got, strict=True)
    for tensors in pairs:
        half = len(tensors) // 2
        for a, b in zip(tensors[:half], tensors[half:], strict=True):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_sft_loss_takes_the_head_at_the_trained_tokens_only(tiny_model):
    """SFT's loss, token count and accuracy as from the forward's logits, with the head over the trained tokens."""
    from rlaif.config.sft import SFTConfig
    from rlaif.stages.sft import SFTTask

    tok = load_tokenizer(tiny_model)
    task = SFTTask(tok, SFTConfig(max_length=64))
    data = [
        task.encode({"prompt": q, "completion": a})
        for q, a in [
            ("Hi?", "Hello there."),
            ("How do I bake bread at home?", "Mix flour and water, then bake."),
        ]
    ]
    plain = load_model(tiny_model)
    plain.__dict__[logprobs.CHECKED] = False  # the forward's logits
    expected_loss, expected = task.loss(plain, data, [0, 1])
    model = load_model(tiny_model)
    task.loss(model, data, [0, 1])  # the check's forwards
    head_rows = _head_rows(model)
    loss, figures = task.loss(model, data, [0, 1])
    assert model.__dict__[logprobs.CHECKED] is True
    assert head_rows == [figures["tokens"]] and figures["tokens"] == expected["tokens"] > 0
    assert torch.allclose(loss, expected_loss, atol=1e-5)
    assert figures["accuracy"] == pytest.approx(expected["accuracy"])
