"""RLHB (rlaif/rlhb.py, the discriminator stage, rl.reward = "discriminator" / "behaviour"): the pieces by hand,
then rounds on a tiny model through `rlaif run`, a collapse, and a run killed mid-round."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlaif.cli import main
from rlaif.data import read_jsonl, write_jsonl
from rlaif.feedback import simulate_log
from rlaif.rlhb import collapse_check, combined_reward, generator_prompt, ridge, swapped_fakes
from tests.conftest import kill_then_rerun


def test_swapped_fakes_carry_another_records_behaviour():
    records = [{"query": f"q{i}", "response": f"r{i}", "behaviour": f"b{i % 3}"} for i in range(9)]
    fakes = swapped_fakes(records, seed=0)
    assert len(fakes) == 9
    for (q, r, b), rec in zip(fakes, records, strict=True):
        assert (q, r) == (rec["query"], rec["response"]) and b != rec["behaviour"] and b in {"b0", "b1", "b2"}
    assert swapped_fakes([{"query": "q", "response": "r", "behaviour": "same"}] * 3, 0) == []


def test_collapse_is_both_kinds_scored_real():
    assert collapse_check([0.97, 0.99], [0.96, 0.98], 0.95).startswith("the discriminator collapsed")
    assert collapse_check([0.97, 0.99], [0.30, 0.40], 0.95) is None
    assert collapse_check([0.60, 0.50], [0.99, 0.99], 0.95) is None


def test_rlhb_c_combines_predicted_counts_as_in_the_paper():
    # (likes - dislikes) / (views + clicks) on counts back from log(1 + x)
    pred = {k: math.log1p(v) for k, v in {"views": 90, "clicks": 10, "likes": 30, "dislikes": 5}.items()}
    assert combined_reward(pred) == pytest.approx((30 - 5) / (90 + 10))


def test_ridge_recovers_a_linear_target():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(200, 5, generator=g) * torch.tensor([1.0, 10.0, 0.1, 1.0, 3.0]) + 4
    y = f @ torch.tensor([0.5, -0.1, 2.0, 0.0, 0.3]) + 1.5
    w, b = ridge(f, y, 1e-8)
    assert torch.allclose(f @ w + b, y, atol=1e-3)


def test_generator_prompt_asks_for_the_behaviour_of_the_last_request():
    conv = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "second"},
    ]
    assert generator_prompt(conv, "Many liked it.") == "second\n\n(Write the answer so that: Many liked it.)"


# -- through rlaif run --------------------------------------------------------------------------------------


@pytest.fixture
def rlhb_run(tiny_run):
    pairs = [
        {
            "prompt": f"How do I bake bread {i}?",
            "chosen": "Mix flour, water, salt and yeast, then bake it.",
            "rejected": "I cannot help with that.",
        }
        for i in range(12)
    ]
    write_jsonl(tiny_run / "log.jsonl", simulate_log(pairs, seed=0))
    assert main(["feedback", "import", str(tiny_run / "log.jsonl"), "--run", str(tiny_run)]) == 0
    cfg = (
        (tiny_run / "config.toml")
        .read_text()
        .replace('prompts = "prompts.jsonl"', 'prompts = "feedback/rlhb-prompts.jsonl"')
    )
    cfg += """
[round]
stages = ["generate", "discriminator", "rl", "merge"]
[rl]
reward = "discriminator"
epochs = 1
batch_size = 4
max_length = 96
[rlhb]
max_length = 96
demo_share = 0.25
"""
    (tiny_run / "config.toml").write_text(cfg)
    return tiny_run


def test_two_rlhb_rounds_train_on_the_discriminators_reward(rlhb_run, capsys):
    assert main(["run", str(rlhb_run), "--rounds", "2"]) == 0
    d1 = json.loads((rlhb_run / "round_1" / "discriminator.json").read_text())
    d2 = json.loads((rlhb_run / "round_2" / "discriminator.json").read_text())
    assert d1["fakes_generated"] > 0 and d1["demonstrations"] == 0  # no earlier discriminator to rank with
    assert d2["demonstrations"] > 0  # round 2 keeps the best of its generations by round 1's discriminator
    assert 0 <= d2["heldout_accuracy_generated"] <= 1 and d1["fakes_swapped"] > 0
    rl = json.loads((rlhb_run / "round_2" / "stages.json").read_text())["rl"]
    responses = read_jsonl(rlhb_run / "round_2" / "responses.jsonl")
    assert rl["steps"] > 0 and rl["rollouts"] == len(responses)
    # the reward the rl stage used is the round's discriminator's logit on the desired behaviour
    from rlaif.config import ModelConfig, VLLMConfig
    from rlaif.config.rlhb import DESIRED
    from rlaif.pool import ModelPool
    from rlaif.rlhb import Discriminator

    prompts = {p["id"]: p["query"] for p in read_jsonl(rlhb_run / "feedback" / "rlhb-prompts.jsonl")}
    pool = ModelPool(ModelConfig(), "cpu", VLLMConfig(), 0)
    logits = Discriminator(rlhb_run / "round_2" / "discriminator", pool).logits(
        [(prompts[x["prompt_id"]], x["text"], DESIRED) for x in responses]
    )
    assert rl["reward_mean"] == pytest.approx(sum(logits) / len(logits), abs=1e-4)
    assert main(["report", str(rlhb_run)]) == 0
    assert "rlhb: the discriminator" in capsys.readouterr().out


def test_a_collapsed_discriminator_stops_the_run_with_the_fix(rlhb_run, monkeypatch, capsys):
    import rlaif.stages.discriminator as stage

    monkeypatch.setattr(stage, "probabilities", lambda f, w, b: [0.99] * len(f))
    assert main(["run", str(rlhb_run), "--rounds", "1"]) == 1
    err = capsys.readouterr().err
    assert "discriminator collapsed" in err and "rlhb.demo_share" in err
    assert not (rlhb_run / "round_1" / "metrics.json").exists()


def test_rlhb_run_killed_after_the_discriminator_resumes(rlhb_run):
    kill_then_rerun(rlhb_run, "discriminator.json", ["--rounds", "1"])
    assert (rlhb_run / "round_1" / "metrics.json").is_file()
    stages = json.loads((rlhb_run / "round_1" / "stages.json").read_text())
    assert stages["rl"]["steps"] > 0


def test_rlhb_c_predictor_round(rlhb_run):
    cfg = (rlhb_run / "config.toml").read_text().replace('reward = "discriminator"', 'reward = "behaviour"')
    (rlhb_run / "config.toml").write_text(cfg + 'mode = "predictor"\n')
    assert main(["run", str(rlhb_run), "--rounds", "1"]) == 0
    d = json.loads((rlhb_run / "round_1" / "discriminator.json").read_text())
    assert d["mode"] == "predictor" and set(d["train_r2"]) == {"views", "clicks", "likes", "dislikes"}
    assert json.loads((rlhb_run / "round_1" / "stages.json").read_text())["rl"]["steps"] > 0


def test_discriminator_reward_without_the_stage_is_refused(tiny_run, capsys):
    assert (
        main(
            [
                "run",
                str(tiny_run),
                "--set",
                "rl.reward=discriminator",
                "--set",
                'round.stages=["generate","rl","merge"]',
            ]
        )
        == 2
    )
    assert 'put "discriminator" before "rl"' in capsys.readouterr().err


def test_the_discriminator_head_scores_real_above_fake():
    from rlaif.rlhb import fit, probabilities

    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(60, 8, generator=g) + 1.5, torch.randn(60, 8, generator=g) - 1.5
    w, b = fit(real, fake, 1.0)
    assert min(probabilities(real, w, b)) > 0.5 > max(probabilities(fake, w, b))
