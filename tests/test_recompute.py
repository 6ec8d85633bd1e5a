"""Activation checkpointing (rlaif/recompute.py, launch.activation_checkpointing): each decoder layer's forward runs
again in the backward pass, the training is the same as without it, the saved adapter is a plain PEFT adapter, and
the trained model comes back unwrapped; `rlaif run` turns it on for its training stages only."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from rlaif import recompute
from rlaif.cli import main
from rlaif.models import load_model, load_tokenizer
from rlaif.stages.dpo import train_preferences
from tests.test_sharding import assert_same_training
from tests.test_train import PAIRS, _cfg


def _train(model_path, out):
    """DPO on the tiny model; returns (log, calls of the decoder layers' forwards, model after training)."""
    model = load_model(model_path)
    calls = []
    for layer in recompute.decoder_layers(model):
        layer.register_forward_pre_hook(lambda m, a: calls.append(1))
    trained, _, log = train_preferences(model, load_tokenizer(model_path), PAIRS * 2, _cfg(), 0, out)
    return log, len(calls), trained


def test_checkpointed_training_recomputes_each_layer_and_trains_the_same(tiny_model, tmp_path, monkeypatch):
    monkeypatch.delenv(recompute.CHECKPOINTING_ENV, raising=False)
    plain_log, plain_calls, _ = _train(tiny_model, tmp_path / "plain")
    monkeypatch.setenv(recompute.CHECKPOINTING_ENV, "1")
    log, calls, trained = _train(tiny_model, tmp_path / "recomputed")

    layers = len(recompute.decoder_layers(load_model(tiny_model)))
    assert layers >= 2
    # one more forward of every layer per training micro-batch (batch 2, no accumulation: one a step); the
    # reference log-probs (no gradients) are not recomputed
    assert calls - plain_calls == layers * len(log) > 0
    assert len(log) == len(plain_log)
    assert_same_training(plain_log, log, tmp_path / "plain", tmp_path / "recomputed", 1e-6, 1e-6)
    # the model comes back as it went in: no wrapper left, no wrapper in a parameter's name
    assert recompute.wrappers(trained) == []
    assert not any(recompute.WRAPPED in n for n, _ in trained.named_parameters())


@pytest.mark.parametrize("variant", ["dp-sgd", "tr-dpo"])
def test_checkpointing_trains_the_same_with_per_example_gradients_and_a_moving_reference(
    tiny_model, tmp_path, monkeypatch, variant
):
    """DP-SGD's per-example gradients (forward and backward hooks on the LoRA layers: the recomputed forward fires
    them again) and TR-DPO's reference adapter (updated by name) train as without checkpointing."""
    from rlaif.config.privacy import PrivacyConfig

    cfg = _cfg(beta=0.5, tr_dpo_tau=2 if variant == "tr-dpo" else 0)
    extra = {"privacy": PrivacyConfig(epsilon=8.0, clip=0.5)} if variant == "dp-sgd" else {}

    def run(out):
        tok = load_tokenizer(tiny_model)
        return train_preferences(load_model(tiny_model), tok, PAIRS * 3, cfg, 0, out, **extra)[2]

    monkeypatch.delenv(recompute.CHECKPOINTING_ENV, raising=False)
    plain = run(tmp_path / "plain")
    monkeypatch.setenv(recompute.CHECKPOINTING_ENV, "1")
    assert_same_training(
        plain, run(tmp_path / "recomputed"), tmp_path / "plain", tmp_path / "recomputed", 1e-6, 1e-6
    )


@pytest.fixture
def wrapped(monkeypatch) -> list:
    """The environment variable as each call of recompute.wrap saw it (the real wrap runs)."""
    monkeypatch.delenv(recompute.CHECKPOINTING_ENV, raising=False)
    seen, real = [], recompute.wrap

    def spy(model):
        seen.append(os.environ.get(recompute.CHECKPOINTING_ENV))
        return real(model)

    monkeypatch.setattr(recompute, "wrap", spy)
    return seen


ON = ["--set", "launch.activation_checkpointing=true"]


def test_run_turns_checkpointing_on_for_its_training_stages_only(tiny_run, wrapped):
    assert main(["run", str(tiny_run), "--rounds", "1", *ON]) == 0
    assert wrapped == ["1"]  # the round's one training stage (dpo)
    assert recompute.CHECKPOINTING_ENV not in os.environ  # restored after the stage
    assert (tiny_run / "round_1" / "model").is_dir()


def test_training_on_a_file_alone_takes_it_from_set(tiny_model, tmp_path, wrapped):
    import json

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    out = tmp_path / "out"
    assert main(["train", "--pairs", str(pairs), "--model", tiny_model, "--out", str(out), *ON]) == 0
    assert wrapped == ["1"] and (out / "model").is_dir()
    assert main(["train", "--pairs", str(pairs), "--model", tiny_model, "--out", str(tmp_path / "o2")]) == 0
    assert wrapped == ["1"]  # off by default


def test_a_model_without_decoder_layers_is_refused_by_name():
    from rlaif.data import DataError

    with pytest.raises(DataError, match="launch.activation_checkpointing"):
        recompute.wrap(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_a_checkpoint_written_with_checkpointing_on_resumes_with_it_off(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model

    from rlaif.trainer import _load_checkpoint, _save_checkpoint

    def peft_model():
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        return get_peft_model(load_model(tiny_model), lora)

    def optimizer_and_schedule(model):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    wrapped = peft_model()
    recompute.wrap(wrapped)
    with torch.no_grad():
        for n, p in wrapped.named_parameters():
            if "lora_" in n:
                p.fill_(0.25)
    _save_checkpoint(wrapped, *optimizer_and_schedule(wrapped), 3, [{"loss": 1.0}], "f", tmp_path / "ckpt")
    saved = load_file(str(tmp_path / "ckpt" / "lora.safetensors"))
    assert saved and not any(recompute.WRAPPED in k for k in saved)

    plain = peft_model()
    assert _load_checkpoint(plain, *optimizer_and_schedule(plain), "f", tmp_path / "ckpt") == (
        3,
        [{"loss": 1.0}],
    )
    assert all(bool((p == 0.25).all()) for n, p in plain.named_parameters() if "lora_" in n)
