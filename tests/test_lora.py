"""Rounds kept as one composed LoRA adapter over the initial model (rlaif/lora.py): the composition is exact."""

from __future__ import annotations

import pytest
import torch

from rlaif.lora import base_of, compose, compose_factors, is_lora, rank_of, vllm_rank
from rlaif.models import load_merged, load_model


def test_composed_factors_give_the_sum_of_the_deltas():
    """Golden: B' A' = s1 B1 A1 + s2 B2 A2 for every module; a module one part lacks gets only the other's."""
    g = torch.Generator().manual_seed(0)
    a1, b1 = torch.randn(2, 5, generator=g), torch.randn(4, 2, generator=g)
    a2, b2 = torch.randn(3, 5, generator=g), torch.randn(4, 3, generator=g)
    a3, b3 = torch.randn(3, 6, generator=g), torch.randn(6, 3, generator=g)
    a, b = compose_factors([({"q": a1}, {"q": b1}, 0.5), ({"q": a2, "v": a3}, {"q": b2, "v": b3}, 2.0)])
    assert a["q"].shape == (5, 5) and b["q"].shape == (4, 5)
    assert torch.allclose(b["q"] @ a["q"], 0.5 * b1 @ a1 + 2.0 * b2 @ a2, atol=1e-6)
    assert torch.allclose(b["v"] @ a["v"], 2.0 * b3 @ a3, atol=1e-6)
    hand = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0]])  # A (1x2), B (1x1): delta = [[3, 6]]
    a, b = compose_factors([({"m": hand[0]}, {"m": hand[1]}, 2.0), ({"m": hand[0]}, {"m": hand[1]}, 1.0)])
    assert (b["m"] @ a["m"]).tolist() == [[9.0, 18.0]]  # 2 * [3, 6] + 1 * [3, 6]


def _adapter(model_path: str, out, seed: int, r: int):
    """A LoRA adapter with random (non-zero) B on the model, saved with peft."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(
        load_model(model_path),
        LoraConfig(r=r, lora_alpha=3 * r, target_modules=["q_proj", "v_proj", "down_proj"]),
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.save_pretrained(out)
    return model.merge_and_unload()


def test_two_rounds_composed_equal_two_merges(tiny_model, tmp_path):
    """Round 1's adapter on the initial model, round 2's on round 1's merged model: the composed folder,
    folded into the initial model, is round 2's merged model."""
    from rlaif.models import load_tokenizer, save_model

    tok = load_tokenizer(tiny_model)
    merged1 = _adapter(tiny_model, tmp_path / "a1", 1, 4)
    save_model(merged1, tok, tmp_path / "m1")
    merged2 = _adapter(str(tmp_path / "m1"), tmp_path / "a2", 2, 8)
    run = tmp_path / "run"
    c1 = compose(None, tmp_path / "a1", tiny_model, tiny_model, run / "round_1" / "lora")
    c2 = compose(c1, tmp_path / "a2", tmp_path / "m1", tiny_model, run / "round_2" / "lora")
    assert is_lora(c2) and rank_of(c2) == 12 and base_of(c2) == tiny_model
    assert (c2 / "tokenizer.json").is_file()
    got = load_merged(c2, "cpu", "float32").state_dict()
    for name, t in merged2.state_dict().items():
        assert torch.allclose(got[name], t, atol=1e-5), name
    assert not torch.allclose(got["model.layers.0.self_attn.q_proj.weight"],
                              load_model(tiny_model).state_dict()["model.layers.0.self_attn.q_proj.weight"])  # fmt: skip


def test_vllm_rank_is_the_smallest_that_holds_it():
    assert [vllm_rank(r) for r in (1, 2, 16, 17, 48, 512)] == [1, 8, 16, 32, 64, 512]
    with pytest.raises(ValueError, match="merge it"):
        vllm_rank(513)


def test_two_deferred_rounds_train_and_sample_as_merged_rounds(tiny_run, tmp_path):
    """merge.defer: each round's model is a composed adapter (far smaller than a model), the rounds train on
    the same weights (step losses to 1e-5) and sample the same responses as merged rounds, and `rlaif merge`
    writes round 2's merged weights."""
    import json

    from rlaif.cli import main
    from rlaif.data import read_jsonl
    from rlaif.rounds import run

    merged = tmp_path / "merged"
    merged.mkdir()
    for f in ("config.toml", "prompts.jsonl"):
        (merged / f).write_text((tiny_run / f).read_text())
    run(merged, rounds=2)
    results = run(tiny_run, rounds=2, overrides=["merge.defer=true"])
    for k, m in enumerate(results, 1):
        d = tiny_run / f"round_{k}"
        assert (
            m["merge"]["deferred"] and m["model"]["path"] == f"round_{k}/lora" and not (d / "model").exists()
        )
        assert is_lora(d / "lora") and rank_of(d / "lora") == 16 * k
        adapter_bytes = sum(f.stat().st_size for f in (d / "lora").iterdir())
        model_bytes = sum(f.stat().st_size for f in (merged / f"round_{k}" / "model").iterdir())
        assert adapter_bytes < model_bytes
        for a, b in zip(
            read_jsonl(d / "train_log.jsonl"),
            read_jsonl(merged / f"round_{k}" / "train_log.jsonl"),
            strict=True,
        ):
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    got = read_jsonl(tiny_run / "round_2" / "responses.jsonl")
    want = read_jsonl(merged / "round_2" / "responses.jsonl")
    assert [x["token_ids"] for x in got] == [x["token_ids"] for x in want]
    assert main(["merge", str(tiny_run)]) == 0
    weights = load_model(str(tiny_run / "round_2" / "model")).state_dict()
    for name, t in load_model(str(merged / "round_2" / "model")).state_dict().items():
        assert torch.allclose(weights[name], t, atol=1e-5), name
    assert json.loads((tiny_run / "round_2" / "metrics.json").read_text())["model"]["path"] == "round_2/lora"


def test_merge_scale_extrapolates_the_rounds_change(tiny_run, tiny_model):
    """merge.scale (ExPO on the round's LoRA delta): through `rlaif run`, round 1's merged weights are
    W0 + 2 * (the trained adapter's delta), merged and deferred alike; a scale of 0 stops the run before its
    first stage, naming the key."""
    from peft import PeftModel

    from rlaif.rounds import run

    w0 = load_model(tiny_model).state_dict()
    run(tiny_run, rounds=1, overrides=["merge.scale=2.0"])
    d = tiny_run / "round_1"
    plain = (
        PeftModel.from_pretrained(load_model(tiny_model), str(d / "adapter")).merge_and_unload().state_dict()
    )
    scaled = load_model(str(d / "model")).state_dict()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(plain[name], w0[name])  # the adapter changed something
    for n, t in plain.items():
        assert torch.allclose(scaled[n], w0[n] + 2.0 * (t - w0[n]), atol=1e-5), n
    deferred = compose(None, d / "adapter", tiny_model, tiny_model, tiny_run / "deferred" / "lora", scale=2.0)
    got = load_merged(deferred, "cpu", "float32").state_dict()
    for n, t in scaled.items():
        assert torch.allclose(got[n], t, atol=1e-5), n
    with pytest.raises(ValueError, match="merge.scale"):
        run(tiny_run, rounds=2, overrides=["merge.scale=0"])
