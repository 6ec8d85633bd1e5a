"""Bradley-Terry reward models: the loss (golden values), the features the head reads, the head fit, the
rm train / eval verbs, and a reward model as a round's judge."""

import json
import math

import pytest
import torch

from rlaif.config import ModelConfig
from rlaif.losses import bradley_terry_loss
from rlaif.models import load_model, load_tokenizer
from rlaif.pool import ModelPool


def test_bradley_terry_loss_golden_values():
    t = torch.tensor
    # equal rewards: -log(1/2) = ln 2
    assert bradley_terry_loss(t([0.0]), t([0.0])).item() == pytest.approx(math.log(2))
    # r_c - r_r = ln 3: P(chosen) = 3/4, loss = ln(4/3)
    assert bradley_terry_loss(t([math.log(3)]), t([0.0])).item() == pytest.approx(math.log(4 / 3))
    # the wrong way round: P = 1/4, loss = ln 4
    assert bradley_terry_loss(t([0.0]), t([math.log(3)])).item() == pytest.approx(math.log(4))
    # a margin of ln 3 asks for more: the ln 3 gap now counts as 0, loss ln 2
    assert bradley_terry_loss(t([math.log(3)]), t([0.0]), margin=math.log(3)).item() == pytest.approx(
        math.log(2)
    )
    # centring adds c (r_c + r_r)^2: rewards 2 and 1, c = 0.1: ln(1 + e^-1) + 0.1 * 9
    got = bradley_terry_loss(t([2.0]), t([1.0]), centring=0.1).item()
    assert got == pytest.approx(math.log(1 + math.exp(-1)) + 0.9)
    # per pair, not averaged
    assert bradley_terry_loss(t([1.0, -1.0]), t([0.0, 0.0])).shape == (2,)


def test_the_head_reads_the_last_real_token_whatever_the_padding(tiny_model):
    from rlaif.reward.features import features
    from rlaif.reward.format import encode

    tok, model = load_tokenizer(tiny_model), load_model(tiny_model)
    rows = [
        encode(tok, "How do I bake bread?", "Mix flour and water, then bake it for an hour.", 128),
        encode(tok, "hi", "No.", 128),
        encode(
            tok,
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
            ],
            "ok",
            128,
        ),
    ]
    assert all(ids[-1] == tok.eos_token_id for ids, _ in rows)  # the last response token is EOS
    with torch.inference_mode():
        alone = torch.cat([features(model, [r], tok.pad_token_id) for r in rows])
        right = features(model, rows, tok.pad_token_id, side="right")
        left = features(model, rows, tok.pad_token_id, side="left")
        # a different padding id changes nothing either: pads are never read
        other = features(model, rows, tok.eos_token_id, side="right")
    for batch in (right, left, other):
        assert torch.allclose(batch, alone, atol=1e-5)
    # and what it reads is the hidden state at the EOS, and the mean over the response tokens
    ids, start = rows[0]
    with torch.inference_mode():
        h = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    d = h.shape[-1]
    assert torch.allclose(alone[0, :d], h[-1], atol=1e-5)
    assert torch.allclose(alone[0, d:], h[start:].mean(0), atol=1e-5)


def test_fit_head_recovers_a_linear_preference():
    from rlaif.reward.fit import cross_validate, fit_head

    g = torch.Generator().manual_seed(0)
    true = torch.randn(6, generator=g)
    a, b = torch.randn(200, 6, generator=g) * 3 + 1, torch.randn(200, 6, generator=g) * 3 + 1
    chosen_is_a = (a @ true) > (b @ true)
    fc = torch.where(chosen_is_a[:, None], a, b)
    fr = torch.where(chosen_is_a[:, None], b, a)
    w, bias = fit_head(fc, fr, l2=1e-4)
    assert ((fc @ w) > (fr @ w)).float().mean() >= 0.99  # separable: all but pairs on the boundary
    cos = torch.nn.functional.cosine_similarity(w, true, dim=0)
    assert cos > 0.95
    w2, _ = fit_head(fc, fr, l2=1e-4)
    assert torch.equal(w, w2)  # deterministic
    cv = cross_validate(fc, fr, [1e-4, 10.0])
    assert cv[1e-4] > 0.9 and set(cv) == {1e-4, 10.0}
    # centring pins the mean reward near 0; without it the bias is free (and stays at its start, 0)
    wc, bc = fit_head(fc + 5, fr + 5, l2=1e-4, centring=1.0)
    assert abs(float(((fc + 5) @ wc + bc).mean() + ((fr + 5) @ wc + bc).mean())) < 0.5


def _pairs(n, offset=0):
    good = ["Mix flour and water, then bake it.", "Here is a safer idea: bake bread.", "Bake it at 200 C."]
    bad = ["I cannot help with that.", "Response B is less harmful.", "bake bake bake bake"]
    return [
        {
            "prompt": f"Question {i + offset}: how do I bake bread?",
            "chosen": good[i % 3],
            "rejected": bad[(i + 1) % 3],
        }
        for i in range(n)
    ]


def test_rm_train_and_eval_verbs(tiny_model, tmp_path, capsys):
    from rlaif.cli import main

    train = tmp_path / "dpo.jsonl"
    train.write_text("".join(json.dumps(p) + "\n" for p in _pairs(30)))
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(p) + "\n" for p in _pairs(12, offset=100)))
    out = tmp_path / "rm"
    assert main(["rm", "train", "--pairs", str(train), "--model", tiny_model, "--out", str(out)]) == 0
    spec = json.loads((out / "reward.json").read_text())
    assert (
        spec["mode"] == "frozen" and spec["figures"]["pairs"] == 30 and (out / "head.safetensors").is_file()
    )
    report = tmp_path / "rm-eval.json"
    assert main(["rm", "eval", "--model", str(out), "--data", str(dev), "--out", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["summary"]["pairs"] == 12 and result["summary"]["agreement"] == 1.0
    assert result["lengths"]["accuracy"] == 1.0 and result["lengths"]["reward_length_correlation"] is not None
    text = capsys.readouterr().out
    assert "by length" in text and "reward" in text
    # swapped labels on the same pairs: the model disagrees with every one
    swapped = tmp_path / "swapped.jsonl"
    swapped.write_text(
        "".join(
            json.dumps({**p, "chosen": p["rejected"], "rejected": p["chosen"]}) + "\n"
            for p in _pairs(12, 100)
        )
    )
    assert main(["rm", "eval", "--model", str(out), "--data", str(swapped), "--out", str(report)]) == 0
    assert json.loads(report.read_text())["summary"]["agreement"] == 0.0


def test_rm_train_lora_verb(tiny_model, tmp_path, capsys):
    from rlaif.cli import main

    train = tmp_path / "pairs.jsonl"
    train.write_text("".join(json.dumps(p) + "\n" for p in _pairs(8)))
    out = tmp_path / "rm"
    args = ["rm", "train", "--mode", "lora", "--pairs", str(train), "--model", tiny_model, "--out", str(out)]
    opts = ["--epochs", "3", "--batch-size", "2", "--learning-rate", "5e-3", "--lora-r", "4"]
    opts += ["--max-length", "64"]
    assert main([*args, *opts]) == 0
    spec = json.loads((out / "reward.json").read_text())
    f = spec["figures"]
    assert spec["mode"] == "lora" and f["pairs"] == 8
    assert f["loss_first"] == pytest.approx(math.log(2), abs=1e-6) and f["loss_last"] < f["loss_first"]
    text = capsys.readouterr().out
    assert "LoRA reward model on 8 pairs" in text and f"{f['loss_last']:.3f}" in text
    # the flags reach the trainer: one epoch of the same pairs ends at a higher loss
    assert main([*args[:-1], str(tmp_path / "rm1"), *opts[2:]]) == 0
    one = json.loads((tmp_path / "rm1" / "reward.json").read_text())["figures"]
    assert one["steps"] * 3 == f["steps"] and one["loss_last"] > f["loss_last"]


def test_a_reward_model_judges_a_round(tiny_run, tiny_model, tmp_path):
    from rlaif.data import read_jsonl
    from rlaif.reward.fit import train_frozen
    from rlaif.reward.model import RewardModel
    from rlaif.rounds import run

    out = tmp_path / "rm"
    train_frozen(_pairs(30), tiny_model, out, ModelPool(ModelConfig(), "cpu"))
    (m,) = run(
        tiny_run, rounds=1, overrides=["judge.mode=reward", f"judge.reward_model={json.dumps(str(out))}"]
    )
    assert m["judge"]["mode"] == "reward" and m["judge"]["model"] == str(out)
    rm = RewardModel(out, ModelPool(ModelConfig(), "cpu"))
    prefs = read_jsonl(tiny_run / "round_1" / "preferences.jsonl")
    assert prefs
    rewards = rm.rewards(
        [(p["prompt"], p["chosen"], None) for p in prefs]
        + [(p["prompt"], p["rejected"], None) for p in prefs]
    )
    n = len(prefs)
    assert all(c > r for c, r in zip(rewards[:n], rewards[n:], strict=True))  # chosen = higher reward


def test_lora_reward_model_starts_at_ln2_learns_and_resumes(tiny_model, tmp_path):
    from rlaif.config.loop import LoopConfig
    from rlaif.reward.lora import train_lora
    from rlaif.reward.model import RewardModel
    from tests.test_train import _KillAt

    cfg = LoopConfig(
        epochs=3,
        batch_size=2,
        learning_rate=5e-3,
        warmup_ratio=0.0,
        lora_r=4,
        lora_alpha=8,
        checkpoint_every=2,
        max_length=64,
    )
    pool = ModelPool(ModelConfig(), "cpu")
    spec = train_lora(_pairs(8), tiny_model, tmp_path / "rm", pool, cfg, max_length=64)
    f = spec.figures
    assert f["loss_first"] == pytest.approx(math.log(2), abs=1e-6)  # a zero head: every reward 0
    assert f["loss_last"] < f["loss_first"] and f["train_accuracy"] > 0.5
    rm = RewardModel(tmp_path / "rm", ModelPool(ModelConfig(), "cpu"))
    assert rm.spec.mode == "lora"
    held = _pairs(6, offset=50)
    r = rm.rewards(
        [(p["prompt"], p["chosen"], None) for p in held] + [(p["prompt"], p["rejected"], None) for p in held]
    )
    assert sum(c > x for c, x in zip(r[:6], r[6:], strict=True)) >= 5
    # killed mid-training: the rerun resumes from the checkpoint and ends where an uninterrupted one did
    with pytest.raises(KeyboardInterrupt):
        train_lora(
            _pairs(8),
            tiny_model,
            tmp_path / "killed",
            ModelPool(ModelConfig(), "cpu"),
            cfg,
            max_length=64,
            progress=_KillAt(5),
        )
    resumed = train_lora(
        _pairs(8), tiny_model, tmp_path / "killed", ModelPool(ModelConfig(), "cpu"), cfg, max_length=64
    )
    assert resumed.figures["resumed_at_step"] == 4
    assert resumed.figures["loss_last"] == pytest.approx(f["loss_last"], abs=1e-5)


def test_a_round_trains_a_reward_model_on_hybrid_labels_and_measures_it(tiny_run, tmp_path):
    from rlaif.data import read_jsonl
    from rlaif.rounds import run

    human = tmp_path / "human.jsonl"
    human.write_text("".join(json.dumps(p) + "\n" for p in _pairs(20)))
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(p) + "\n" for p in _pairs(10, offset=70)))
    stages = '["generate", "judge", "preferences", "reward_model", "train", "merge"]'
    sets = [
        f"round.stages={stages}",
        f"reward_model.human=[{json.dumps(str(human))}]",
        "reward_model.human_share=2.0",
        f"reward_model.heldout={json.dumps(str(held))}",
        "reward_model.principle_conditioned=true",
    ]
    (m,) = run(tiny_run, rounds=1, overrides=sets)
    rm = m["reward_model"]
    ai = len(read_jsonl(tiny_run / "round_1" / "preferences.jsonl"))
    assert (
        rm["ai_pairs"] == ai
        and rm["human_pairs"] == min(20, 2 * ai)
        and rm["pairs"] == ai + rm["human_pairs"]
    )
    assert rm["heldout_accuracy"] >= 0.8 and (tiny_run / "round_1" / "rm_eval.json").is_file()
    spec = json.loads((tiny_run / "round_1" / "reward_model" / "reward.json").read_text())
    assert spec["principle_conditioned"] and spec["figures"]["pairs"] == rm["pairs"]
    assert m["dpo"]["steps"] >= 1  # the round goes on to DPO as before


def test_principle_conditioning_puts_the_principle_in_the_input(tiny_model):
    from rlaif.reward.format import encode

    tok = load_tokenizer(tiny_model)
    plain, _ = encode(tok, "hi", "ok", 256)
    steered, _ = encode(tok, "hi", "ok", 256, principle="Which response is less harmful?")
    assert "less harmful" in tok.decode(steered) and "less harmful" not in tok.decode(plain)


def test_rm_train_on_a_runs_judged_pairs_conditioned_on_their_principles(tiny_run, tmp_path, capsys):
    from rlaif.cli import main
    from rlaif.rounds import run

    run(tiny_run, rounds=1)
    prefs = tiny_run / "round_1" / "preferences.jsonl"
    out = tmp_path / "rm"
    assert (
        main(
            [
                "rm",
                "train",
                "--pairs",
                str(prefs),
                "--model",
                str(json.loads((tiny_run / "manifest.json").read_text())["initial_model"]["path"]),
                "--out",
                str(out),
                "--principle-conditioned",
            ]
        )
        == 0
    )
    assert json.loads((out / "reward.json").read_text())["principle_conditioned"] is True
    # TRL files carry no principle: a clear error, not a silently unconditioned model
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(p) + "\n" for p in _pairs(4)))
    assert (
        main(["rm", "train", "--pairs", str(plain), "--out", str(tmp_path / "x"), "--principle-conditioned"])
        == 2
    )
    assert "carry no principle" in capsys.readouterr().err


def test_refusal_pairs_set_each_chosen_answer_against_a_refusal():
    from rlaif.reward.refusals import phrasings, refusal_pairs

    pairs = [
        {"prompt": f"question {i}", "chosen": f"answer {i}", "rejected": f"worse {i}"} for i in range(10)
    ]
    got = refusal_pairs(pairs, 4, seed=3)
    assert len(got) == 4 and got == refusal_pairs(pairs, 4, seed=3)  # seeded
    for p in got:
        i = int(p["prompt"].split()[-1])
        assert (
            p["chosen"] == f"answer {i}" and p["rejected"] in phrasings("train") and p["source"] == "refusal"
        )
    assert len(refusal_pairs(pairs, 50)) == 10  # at most one per pair
    assert not set(phrasings("train")) & set(phrasings("eval"))  # measured on refusals training never saw
    assert all(p["rejected"] in phrasings("eval") for p in refusal_pairs(pairs, 10, split="eval"))


def test_rm_train_adds_refusal_pairs_and_rm_eval_measures_unseen_refusals(tiny_model, tmp_path):
    from rlaif.cli import main

    train = tmp_path / "pairs.jsonl"
    train.write_text("".join(json.dumps(p) + "\n" for p in _pairs(30)))
    out = tmp_path / "rm"
    args = [
        "rm",
        "train",
        "--pairs",
        str(train),
        "--model",
        tiny_model,
        "--out",
        str(out),
        "--refusal-pairs",
        "12",
    ]
    assert main(args) == 0
    spec = json.loads((out / "reward.json").read_text())
    assert spec["figures"]["pairs"] == 42 and any("refusal" in s for s in spec["trained_on"])
    report = tmp_path / "refusals.json"
    args = [
        "rm",
        "eval",
        "--model",
        str(out),
        "--data",
        str(train),
        "--refusal-pairs",
        "8",
        "--out",
        str(report),
    ]
    assert main(args) == 0
    result = json.loads(report.read_text())
    assert result["summary"]["pairs"] == 8 and result["settings"]["refusal_pairs"] == 8
    assert 0 <= result["summary"]["agreement"] <= 1
