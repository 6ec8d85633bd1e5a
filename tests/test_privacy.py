"""Differential privacy (rlaif/privacy.py, the trainer's DP path): per-example gradients, clipping, noise, the
equivalence with the non-private step, two processes against one, the budget, and a DP round through `rlaif run`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlaif.cli import main
from rlaif.config.privacy import PrivacyConfig
from rlaif.data import clear, read_jsonl
from rlaif.launch import close_process_group
from rlaif.models import load_model, load_tokenizer
from rlaif.privacy import (
    BudgetExceeded,
    Entry,
    Ledger,
    PerSampleGrads,
    Plan,
    clip_units,
    epsilon_of,
    plan,
    poisson_plan,
    spent,
    units_of,
)
from rlaif.trainer import _accumulate, dp_accumulate
from tests.test_train import PAIRS, _cfg


def lora_task(tiny_model, n=4):
    from peft import LoraConfig, get_peft_model

    from rlaif.progress import SILENT
    from rlaif.stages.dpo import PreferenceTask

    torch.manual_seed(0)
    cfg = _cfg(beta=0.5)
    tok = load_tokenizer(tiny_model)
    model = get_peft_model(
        load_model(tiny_model),
        LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    with torch.no_grad():  # B = 0 at the start would make every A gradient 0: move off it
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    task = PreferenceTask(tok, cfg)
    data = [task.encode(p) for p in (PAIRS * 2)[:n]]
    task.prepare(model, data, SILENT)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, task, data, params


# LoRA's A layers read the frozen base's activations: torch warns, as in the trainer's DP step, which filters it too
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_per_example_gradients_equal_one_backward_per_example(tiny_model):
    model, task, data, params = lora_task(tiny_model)
    collector = PerSampleGrads(model, params)
    idx = [0, 1, 2, 3]
    loss, _ = task.loss(model, data, idx)
    loss.sum().backward()
    rows = task.row_examples(len(idx))
    per_row = collector.take()
    collector.close()
    for i in idx:
        for q in params:
            q.grad = None
        one, _ = task.loss(model, data, [i])
        one.sum().backward()
        for q, g in per_row.values():
            mine = sum(g[r] for r, e in enumerate(rows) if e == idx.index(i))
            assert torch.allclose(mine, q.grad.float(), atol=1e-6, rtol=1e-4), i


def test_each_units_clipped_gradient_has_norm_at_most_c():
    g = torch.Generator().manual_seed(0)
    sums = {
        1: torch.randn(5, 3, 4, generator=g) * torch.tensor([0.1, 1, 3, 10, 0.01])[:, None, None],
        2: torch.randn(5, 7, generator=g),
    }
    clipped, norms = clip_units(sums, 1.0)
    for u in range(5):
        one, _ = clip_units({k: v[u : u + 1] for k, v in sums.items()}, 1.0)
        n = math.sqrt(sum(float((t**2).sum()) for t in one.values()))
        assert n <= 1.0 + 1e-6
        if norms[u] < 1:  # small ones untouched
            assert all(torch.allclose(one[k], sums[k][u]) for k in sums)
    total = {
        k: sum(clip_units({j: v[u : u + 1] for j, v in sums.items()}, 1.0)[0][k] for u in range(5))
        for k in sums
    }
    assert all(torch.allclose(clipped[k], total[k], atol=1e-6) for k in sums)


def test_dp_step_with_no_noise_and_no_clip_equals_the_plain_step(tiny_model):
    model, task, data, params = lora_task(tiny_model)
    chunk = [0, 1, 2, 3]
    _accumulate(model, task, data, chunk, chunk, 2, params, None)
    plain = [q.grad.clone() for q in params]
    for q in params:
        q.grad = None
    collector = PerSampleGrads(model, params)
    p = Plan(noise=0.0, sample_rate=1.0, steps=1, units=4, delta=0.1, clip=math.inf, poisson=False, lot=4)
    units = [f"record:{i}" for i in range(4)]
    dp_accumulate(model, task, data, chunk, chunk, 2, params, None, collector, units, p, torch.Generator(), 0)
    collector.close()
    for a, q in zip(plain, params, strict=True):
        assert torch.allclose(a, q.grad, atol=1e-6, rtol=1e-5)


def test_the_noise_has_deviation_sigma_c_over_the_lot(tiny_model):
    model, task, data, params = lora_task(tiny_model, n=2)
    task.loss_scale = 0.0
    original = task.loss

    def zero_loss(model_, data_, idx):  # no signal: what is left of the gradient is the noise
        loss, fig = original(model_, data_, idx)
        return loss * 0, fig

    task.loss = zero_loss
    collector = PerSampleGrads(model, params)
    p = Plan(noise=1.7, sample_rate=0.5, steps=1, units=4, delta=0.1, clip=0.3, poisson=True, lot=2.0)
    draws = []
    gen = torch.Generator().manual_seed(3)
    for _ in range(60):
        dp_accumulate(
            model, task, data, [0, 1], [0, 1], 2, params, None, collector, ["a", "b", "a", "b"], p, gen, 0
        )
        draws.append(torch.cat([q.grad.flatten() for q in params]))
    x = torch.cat(draws)
    expected = 1.7 * 0.3 / 2.0
    assert x.numel() > 100_000
    assert abs(x.std().item() / expected - 1) < 0.02 and abs(x.mean().item()) < 3 * expected / math.sqrt(
        x.numel()
    )
    # rank 1 of a group adds none (rank 0 does, once)
    dp_accumulate(
        model, task, data, [0, 1], [0, 1], 2, params, None, collector, ["a", "b", "a", "b"], p, gen, 1
    )
    assert all(float(q.grad.abs().max()) == 0 for q in params)


def test_poisson_lots_take_each_unit_with_probability_q_and_keep_units_whole():
    units = [f"u{i // 2}" for i in range(400)]  # 200 units of 2 records
    p = Plan(noise=1.0, sample_rate=0.1, steps=300, units=200, delta=0.01, clip=1, poisson=True, lot=20)
    steps = poisson_plan(units, p, seed=0)
    assert len(steps) == 300
    sizes = [len(lot) for _, lot in steps]
    assert abs(sum(sizes) / len(sizes) / 2 - 20) < 1.5  # 20 units a lot on average
    for _, lot in steps:
        assert all((i ^ 1) in lot for i in lot)  # both records of a unit, or neither
    assert units_of([{"user": "x"}, {"user": "x"}, {}], PrivacyConfig(epsilon=1, unit="user")) == [
        "user:x",
        "user:x",
        "record:2",
    ]


def test_without_poisson_each_epoch_takes_every_unit_once_in_fixed_lots():
    units = [f"u{i // 2}" for i in range(40)]  # 20 units of 2 records
    p = Plan(noise=1.0, sample_rate=0.25, steps=10, units=20, delta=0.01, clip=1, poisson=False, lot=5)
    steps = poisson_plan(units, p, seed=0)
    assert len(steps) == 10 and [e for e, _ in steps] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    for epoch in (0, 1):
        lots = [lot for e, lot in steps if e == epoch]
        assert all(len(lot) == 10 for lot in lots)  # 5 units of 2 records a lot
        assert sorted(i for lot in lots for i in lot) == list(range(40))  # every record once an epoch
        for lot in lots:
            assert all((i ^ 1) in lot for i in lot)  # a unit's records go together
    assert steps == poisson_plan(units, p, seed=0) and steps != poisson_plan(units, p, seed=1)  # seeded


def test_epsilon_matches_opacus_by_hand_and_the_budget_refuses_an_overdraft(tmp_path):
    from opacus.accountants import PRVAccountant

    cfg = PrivacyConfig(epsilon=4.0, trainings=2)
    ledger = Ledger(tmp_path / "privacy.json", "dpo", 1)
    p1 = plan(cfg, units=400, per_step=8, epochs=2, ledger=ledger)
    acc = PRVAccountant()
    acc.history = [(p1.noise, p1.sample_rate, p1.steps)]
    assert epsilon_of([(p1.noise, p1.sample_rate, p1.steps)], p1.delta) == pytest.approx(
        acc.get_epsilon(p1.delta)
    )
    ledger.add(Entry(p1.noise, p1.sample_rate, p1.steps, 400, p1.delta, 1.0, True, stage="dpo", round=1))
    p2 = plan(cfg, units=400, per_step=8, epochs=2, ledger=Ledger(tmp_path / "privacy.json", "dpo", 2))
    both = spent(
        [
            Entry(p1.noise, p1.sample_rate, p1.steps, 400, p1.delta, 1.0, True, stage="dpo", round=k)
            for k in (1, 2)
        ],
        p1.delta,
        "prv",
        False,
    )
    assert both == pytest.approx(4.0, rel=0.02) and p2.noise == pytest.approx(p1.noise)
    Ledger(tmp_path / "privacy.json", "dpo", 2).add(
        Entry(p2.noise, p2.sample_rate, p2.steps, 400, p2.delta, 1.0, True, stage="dpo", round=2)
    )
    with pytest.raises(
        BudgetExceeded,
        match=r"round 3 would bring the run's privacy spend from epsilon 4.* over privacy.epsilon = 4",
    ):
        plan(cfg, units=400, per_step=8, epochs=2, ledger=Ledger(tmp_path / "privacy.json", "dpo", 3))
    # disjoint stages compose in parallel: another stage's training fits beside them
    parallel = PrivacyConfig(epsilon=4.0, trainings=2, disjoint=True)
    plan(parallel, units=400, per_step=8, epochs=2, ledger=Ledger(tmp_path / "privacy.json", "rl", 1))


# -- two processes -------------------------------------------------------------------------------------------


def _dp_train(model_path, out, world_rank=None):
    from rlaif.stages.dpo import train_preferences

    tok = load_tokenizer(model_path)
    cfg = _cfg(beta=0.5, checkpoint_every=0)
    return train_preferences(
        load_model(model_path), tok, PAIRS * 3, cfg, 0, out, privacy=PrivacyConfig(epsilon=8.0, clip=0.5)
    )


def _dp_worker(rank, world, model_path, tmp):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    _, _, log = _dp_train(model_path, f"{tmp}/out")
    if rank == 0:
        with open(f"{tmp}/log.json", "w") as f:
            json.dump(log, f)
    close_process_group()  # after a failure the process exits with it: no barrier to wait at


def test_dp_two_processes_match_one(tiny_model, tmp_path):
    """Whole units per process, the noise added once (rank 0, from the same seeded generator), the sums
    all-reduced: two processes take the steps of one, noise included."""
    _, metrics, log1 = _dp_train(tiny_model, tmp_path / "single")
    torch.multiprocessing.spawn(_dp_worker, args=(2, tiny_model, str(tmp_path)), nprocs=2, join=True)
    log2 = json.loads((tmp_path / "log.json").read_text())
    assert metrics["privacy"]["noise_multiplier"] > 0 and len(log2) == len(log1) > 2
    for a, b in zip(log1, log2, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


# -- through rlaif run ---------------------------------------------------------------------------------------


def test_a_dp_round_records_its_spend_and_a_round_over_budget_is_refused(tiny_run, capsys):
    args = ["run", str(tiny_run), "--set", "privacy.epsilon=4", "--set", "dpo.batch_size=2"]
    assert main([*args, "--rounds", "1"]) == 0
    ledger = json.loads((tiny_run / "privacy.json").read_text())["trainings"]
    assert [(e["stage"], e["round"]) for e in ledger] == [("dpo", 1)]
    figures = json.loads((tiny_run / "round_1" / "stages.json").read_text())["dpo"]["privacy"]
    assert figures["epsilon_this_training"] == pytest.approx(4.0, rel=0.02)
    assert len(read_jsonl(tiny_run / "round_1" / "train_log.jsonl")) == figures["dp_steps"]
    assert main(["report", str(tiny_run)]) == 0
    assert "differential privacy" in capsys.readouterr().out
    # the budget was for one training: round 2 is refused before it generates anything, round 1 is kept
    assert main([*args, "--rounds", "2"]) == 2
    err = capsys.readouterr().err
    assert "round 2 is refused before it starts" in err and "privacy.trainings" in err
    assert (tiny_run / "round_1" / "metrics.json").is_file() and not (
        tiny_run / "round_2" / "responses.jsonl"
    ).exists()
    # planned for two trainings, a second round fits (with more noise each), and the ledger composes both
    for name in ("round_1", "round_2", "privacy.json", "manifest.json"):
        clear(tiny_run / name)
    two = [*args, "--set", "privacy.trainings=2", "--rounds", "2"]
    assert main(two) == 0
    ledger = json.loads((tiny_run / "privacy.json").read_text())["trainings"]
    history = [(e["noise"], e["sample_rate"], e["steps"]) for e in ledger]
    assert len(ledger) == 2 and epsilon_of(history, ledger[0]["delta"]) <= 4.0 * 1.02
    assert main(["eval", str(tiny_run), "--limit", "2", "--max-new-tokens", "4"]) == 0
    rows = json.loads((tiny_run / "eval.json").read_text())["rows"]
    assert rows[0]["epsilon"] == 0.0 and 0 < rows[1]["epsilon"] < rows[2]["epsilon"] <= 4.0 * 1.02


def test_a_lot_counts_examples_as_without_dp_when_a_unit_holds_several():
    # a prompt's 4 rollouts (or a user's records) are one unit, but batch_size still counts examples
    p = plan(PrivacyConfig(epsilon=8), units=32, per_step=8, epochs=1, ledger=None, examples=128)
    assert p.sample_rate == pytest.approx(8 / 128) and p.steps == 16 and p.lot == pytest.approx(2.0)
    assert (
        plan(PrivacyConfig(epsilon=8), units=32, per_step=8, epochs=1, ledger=None).steps == 4
    )  # one per record


def test_a_dp_rl_round_takes_as_many_steps_as_without_dp(tiny_run):
    rl = [
        "--set",
        'round.stages=["generate","rl","merge"]',
        "--set",
        "rl.reward=judge",
        "--set",
        "rl.epochs=1",
    ]
    rl += ["--set", "rl.batch_size=2", "--set", "generate.samples_per_prompt=3"]
    assert main(["run", str(tiny_run), "--rounds", "1", "--set", "privacy.epsilon=8", *rl]) == 0
    (e,) = json.loads((tiny_run / "privacy.json").read_text())["trainings"]
    rollouts = read_jsonl(tiny_run / "round_1" / "responses.jsonl")
    n = len(rollouts)  # one row per sample
    assert e["units"] == len({r["prompt_id"] for r in rollouts}) == n // 3
    assert e["sample_rate"] == pytest.approx(2 / n) and e["steps"] == math.ceil(n / 2)


def test_dp_head_fit_learns_a_separable_preference_and_clips():
    from rlaif.reward.fit import fit_head_dp

    g = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=g)
    fc = torch.randn(300, 16, generator=g) + 0.5 * direction
    fr = torch.randn(300, 16, generator=g) - 0.5 * direction
    units = [f"record:{i}" for i in range(300)]
    private = {"privacy": PrivacyConfig(epsilon=8.0, clip=1.0)}
    w, b, p = fit_head_dp(fc, fr, units, private, seed=0, batch=32, epochs=10, lr=0.05)
    assert p.noise > 0 and ((fc @ w) > (fr @ w)).float().mean() > 0.9  # learns despite the noise
    w0, _, _ = fit_head_dp(fc, fr, units, private, seed=0, batch=32, epochs=10, lr=0.05, noise=0.0)
    assert not torch.allclose(w, w0)  # the noise is really added
    users = [
        f"user:{i // 3}" for i in range(300)
    ]  # 100 users of 3 pairs: a lot still holds 32 pairs on average
    _, _, pu = fit_head_dp(fc, fr, users, private, seed=0, batch=32, epochs=1, lr=0.05, noise=0.0)
    assert pu.units == 100 and pu.sample_rate == pytest.approx(32 / 300) and pu.steps == 10


def test_reward_model_stage_trains_with_dp_and_rl_refuses_a_private_head_without(tiny_run, capsys):
    stages = '["generate","judge","preferences","reward_model","dpo","merge"]'
    args = ["run", str(tiny_run), "--rounds", "1", "--set", f"round.stages={stages}"]
    assert main([*args, "--set", "privacy.epsilon=8", "--set", "privacy.trainings=2"]) == 0
    ledger = json.loads((tiny_run / "privacy.json").read_text())["trainings"]
    assert sorted(e["stage"] for e in ledger) == ["dpo", "reward_model"]
    spec = json.loads((tiny_run / "round_1" / "reward_model" / "reward.json").read_text())
    assert spec["figures"]["privacy"]["noise_multiplier"] > 0
    # a head trained in the run without DP is refused as the reward of a DP rl stage
    plain = ["run", str(tiny_run), "--rounds", "1", "--set", f"round.stages={stages}"]
    for name in ("round_1", "privacy.json", "manifest.json"):
        clear(tiny_run / name)
    assert main(plain) == 0
    rl = ["--set", 'round.stages=["generate","rl","merge"]', "--set", "rl.reward=reward_model"]
    rl += ["--set", f"rl.reward_model={tiny_run / 'round_1' / 'reward_model'}"]
    assert main(["run", str(tiny_run), "--rounds", "2", "--set", "privacy.epsilon=8", *rl]) == 2
    assert "without differential privacy" in capsys.readouterr().err
