import math

import pytest
import torch

from rlaif.config import TrainConfig
from rlaif.models import load_model, load_tokenizer
from rlaif.train import batch_logps, encode_pair, lr_at, train_dpo

PAIRS = [
    {
        "prompt": "How do I bake bread?",
        "chosen": "Mix flour, water, salt and yeast, then bake it.",
        "rejected": "I cannot help with that.",
    },
    {
        "prompt": "Which response is more helpful?",
        "chosen": "Response A",
        "rejected": "Response B is less harmful.",
    },
    {"prompt": "Is this safe?", "chosen": "Here is a safer idea.", "rejected": "bake bread bake bread bake"},
]


def test_encode_pair_marks_responses_and_respects_max_length(tiny_model):
    tok = load_tokenizer(tiny_model)
    e = encode_pair(tok, "How do I bake bread?", "Mix flour.", "No.", max_length=64)
    assert e.chosen[: e.chosen_start] == e.rejected[: e.rejected_start]  # same prompt
    assert e.chosen[-1] == tok.eos_token_id and e.rejected[-1] == tok.eos_token_id
    assert tok.decode(e.chosen[e.chosen_start : -1]) == "Mix flour."
    short = encode_pair(tok, "How do I bake bread? " * 20, "Mix flour " * 10, "No.", max_length=40)
    assert len(short.chosen) <= 40 and len(short.rejected) <= 40
    # an unfinished response (cut by the length limit while sampling) must not be taught to stop
    cut = encode_pair(tok, "hi", "Mix flour", "No.", max_length=64, chosen_finished=False)
    assert cut.chosen[-1] != tok.eos_token_id and cut.rejected[-1] == tok.eos_token_id


def test_lr_schedule_warms_up_then_decays():
    assert [round(lr_at(s, 10, 2), 3) for s in range(10)] == [
        0.5,
        1.0,
        1.0,
        0.875,
        0.75,
        0.625,
        0.5,
        0.375,
        0.25,
        0.125,
    ]
    assert lr_at(0, 1, 0) == 1.0


def test_first_loss_is_ln2_and_training_prefers_chosen(tiny_model, tmp_path):
    tok = load_tokenizer(tiny_model)
    model = load_model(tiny_model)
    cfg = TrainConfig(
        epochs=10,
        batch_size=3,
        beta=1.0,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        max_length=64,
        lora_r=8,
        lora_alpha=16,
    )
    merged, metrics, log = train_dpo(model, tok, PAIRS, cfg, seed=0, out_dir=tmp_path)
    assert metrics["loss_first"] == pytest.approx(math.log(2), abs=1e-5)
    assert metrics["steps"] == 10 == len(log)
    assert metrics["loss_last"] < 0.5 * math.log(2)
    assert metrics["reward_accuracy"] == 1.0
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    # the merged model prefers chosen over rejected more than the starting model did
    base = load_model(tiny_model)
    data = [encode_pair(tok, p["prompt"], p["chosen"], p["rejected"], 64) for p in PAIRS]
    with torch.inference_mode():
        c0, r0 = batch_logps(base, data, tok.pad_token_id, "cpu")
        c1, r1 = batch_logps(merged, data, tok.pad_token_id, "cpu")
    assert torch.all((c1 - r1) > (c0 - r0))


def test_grad_accum_matches_one_big_batch(tiny_model, tmp_path):
    tok = load_tokenizer(tiny_model)
    kw = dict(epochs=1, learning_rate=1e-2, max_length=64, lora_r=4, lora_alpha=8, warmup_ratio=0.0)
    _, m_big, log_big = train_dpo(
        load_model(tiny_model), tok, PAIRS[:2], TrainConfig(batch_size=2, **kw), 0, tmp_path / "a"
    )
    _, m_acc, log_acc = train_dpo(
        load_model(tiny_model),
        tok,
        PAIRS[:2],
        TrainConfig(batch_size=1, grad_accum=2, **kw),
        0,
        tmp_path / "b",
    )
    assert m_big["steps"] == m_acc["steps"] == 1
    assert log_big[0]["grad_norm"] == pytest.approx(log_acc[0]["grad_norm"], rel=1e-4)
