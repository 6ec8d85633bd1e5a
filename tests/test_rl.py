"""The rl stage on the tiny model: every algorithm trains from the rollouts and moves the policy towards the
reward; the KL reached is logged; a run goes generate -> rl -> merge."""

import json
import math

import pytest
import torch

from rlaif.data import read_jsonl
from rlaif.layout import round_model
from rlaif.rounds import run

RL = '["generate", "rl", "merge"]'


@pytest.mark.parametrize(
    "algorithm, kl", [("rloo", "loss"), ("grpo", "reward"), ("ppo", "reward"), ("ppo", "loss")]
)
def test_a_round_of_rl_trains_and_logs_kl(tiny_run, algorithm, kl, monkeypatch):
    import rlaif.stages.rl as rl_stage

    seen = []
    shape = rl_stage.shape
    monkeypatch.setattr(rl_stage, "shape", lambda *a, **k: seen.append(k) or shape(*a, **k))
    sets = [
        f"round.stages={RL}",
        "generate.samples_per_prompt=3",
        f"rl.algorithm={algorithm}",
        f"rl.kl={kl}",
        "rl.learning_rate=5e-3",
        "rl.batch_size=3",
        "rl.max_length=96",
        "rl.missing_eos_penalty=1.5",
    ]
    (m,) = run(tiny_run, rounds=1, overrides=sets)
    x = m["rl"]
    # the rewards are shaped knowing which rollouts finished (rl.missing_eos_penalty)
    finished = [r["finished"] for r in read_jsonl(tiny_run / "round_1" / "responses.jsonl")]
    assert [k["finished"] for k in seen] == [finished] and x["finished_share"] == sum(finished) / len(
        finished
    )
    assert (
        x["algorithm"] == algorithm and x["rollouts"] == 18 and x["steps"] == 12
    )  # 18 / 3 per step, 2 epochs
    log = read_jsonl(tiny_run / "round_1" / "rl_log.jsonl")
    assert len(log) == 12 and all(math.isfinite(r["kl"]) for r in log)
    # the first step sees the policy equal to its reference: ratio 1, KL 0
    assert log[0]["ratio"] == pytest.approx(1.0, abs=1e-5) and log[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert abs(log[-1]["kl"]) > 1e-4  # and the policy moved
    assert (
        m["model"]["path"] == "round_1/model"
        and (tiny_run / "round_1" / "model" / "model.safetensors").is_file()
    )
    assert x["reward_length_correlation"] is None or -1 <= x["reward_length_correlation"] <= 1
    from rich.console import Console

    from rlaif.cli import main
    from rlaif.report import run_report

    assert main(["report", str(tiny_run)]) == 0  # a round with no judge stage still reports
    console = Console(record=True, width=200)
    console.print(run_report(tiny_run))
    text = console.export_text()
    assert algorithm in text and "reward~length" in text
    if algorithm == "ppo":
        assert any(r["value_loss"] > 0 for r in log)
        from safetensors import safe_open

        with safe_open(str(tiny_run / "round_1" / "model" / "model.safetensors"), "pt") as f:
            assert not any("value_head" in k for k in f.keys())


def test_rl_raises_the_reward_of_the_samples_it_rewarded(tiny_run, tiny_model):
    """Train on the rollouts with RLOO; afterwards the policy gives the best-rewarded sample of each prompt a
    higher log-prob relative to the worst one than the starting model did."""
    from rlaif.models import load_model, load_tokenizer
    from rlaif.stages.rl import RLTask, response_logps

    sets = [
        f"round.stages={RL}",
        "generate.samples_per_prompt=4",
        "rl.learning_rate=1e-2",
        "rl.epochs=4",
        "rl.batch_size=4",
        "rl.beta=0.0",
        "rl.max_length=96",
    ]
    run(tiny_run, rounds=1, overrides=sets)
    rollouts = read_jsonl(tiny_run / "round_1" / "responses.jsonl")
    from rlaif.config import load_config
    from rlaif.rounds import open_run
    from rlaif.stages import Round
    from rlaif.stages.rl import rewards, shape

    state = open_run(tiny_run, load_config(tiny_run, sets))
    r = Round(state, 1, tiny_run / "round_1", state.initial, state.initial)
    shaped = shape(rewards(r, rollouts), [x["tokens"] for x in rollouts], state.config.rl)
    tok = load_tokenizer(tiny_model)
    task = RLTask(tok, state.config.rl, [], shaped)
    rows = [task.encode(x) for x in rollouts]
    before, after = load_model(tiny_model), load_model(round_model(tiny_run, 1))
    with torch.inference_mode():
        lp0 = [t.sum().item() for t in response_logps(before, rows, tok.pad_token_id)]
        lp1 = [t.sum().item() for t in response_logps(after, rows, tok.pad_token_id)]
    gains = []
    for s in range(0, len(rollouts), 4):
        group = list(range(s, s + 4))
        best, worst = max(group, key=lambda i: shaped[i]), min(group, key=lambda i: shaped[i])
        if rollouts[best]["text"] != rollouts[worst]["text"]:
            gains.append((lp1[best] - lp1[worst]) - (lp0[best] - lp0[worst]))
    assert gains and sum(g > 0 for g in gains) > len(gains) / 2


def test_rl_config_is_checked(tiny_run, capsys):
    from rlaif.cli import main

    for setting, key in (
        ("rl.algorithm=a2c", "rl.algorithm"),
        ("rl.clip=1.5", "rl.clip"),
        ("rl.beta=nan", "rl.beta"),
    ):
        assert main(["run", str(tiny_run), "--set", setting]) == 2
        assert key in capsys.readouterr().err
    rl = ['round.stages=["generate", "rl", "merge"]', "rl.reward=reward_model", "rl.reward_model=nope"]
    assert main(["run", str(tiny_run), *sum((["--set", s] for s in rl), [])]) == 2
    assert "rl.reward_model: nope: not a reward model" in " ".join(capsys.readouterr().err.split())


def test_shaping_penalises_length_whitens_and_clips():
    from rlaif.config import RLConfig
    from rlaif.stages.rl import shape

    cfg = RLConfig(length_penalty=0.1, whiten_rewards=False)
    assert shape([1.0, 1.0], [10, 0], cfg) == pytest.approx([0.0, 1.0])
    cfg = RLConfig(whiten_rewards=True, reward_clip=1.0)
    out = shape([0.0, 0.0, 0.0, 10.0], [1, 1, 1, 1], cfg)
    assert max(out) == 1.0 and min(out) < 0


def test_a_rollout_that_did_not_finish_loses_the_missing_eos_penalty():
    from rlaif.config import RLConfig
    from rlaif.stages.rl import shape

    cfg = RLConfig(missing_eos_penalty=2.0, whiten_rewards=False)
    # golden: only the cut rollout (finished False) loses 2; with no flags every rollout counts as finished
    assert shape([1.0, 1.0, -0.5], [5, 5, 5], cfg, finished=[True, False, True]) == pytest.approx(
        [1.0, -1.0, -0.5]
    )
    assert shape([1.0, 1.0], [5, 5], cfg) == pytest.approx([1.0, 1.0])
    assert shape([1.0, 1.0], [5, 5], RLConfig(whiten_rewards=False), finished=[True, False]) == pytest.approx(
        [1.0, 1.0]
    )


def test_a_killed_rl_round_resumes_from_its_checkpoint_with_the_same_losses(tiny_run, tmp_path):
    import shutil

    from tests.test_train import _KillAt

    sets = [
        f"round.stages={RL}",
        "generate.samples_per_prompt=3",
        "rl.algorithm=grpo",
        "rl.batch_size=3",
        "rl.checkpoint_every=2",
        "rl.max_length=96",
    ]
    reference = tmp_path / "reference"
    shutil.copytree(tiny_run, reference)
    (want,) = run(reference, rounds=1, overrides=sets)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_run, rounds=1, overrides=sets, progress=_KillAt(5))
    assert (tiny_run / "round_1" / "checkpoint" / "progress.json").is_file()
    (got,) = run(tiny_run, rounds=1, overrides=sets)
    assert got["rl"]["resumed_at_step"] == 4
    a = read_jsonl(tiny_run / "round_1" / "rl_log.jsonl")
    b = read_jsonl(reference / "round_1" / "rl_log.jsonl")
    assert [x["step"] for x in a] == [x["step"] for x in b] == list(range(want["rl"]["steps"]))
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5) and x["kl"] == pytest.approx(y["kl"], abs=1e-5)


def test_with_a_reward_for_one_token_its_probability_rises_and_a_larger_beta_bounds_the_kl(
    tiny_run, tiny_model, tmp_path, monkeypatch
):
    """Reward 1 when a response is token T (the one that splits the most prompts' rollouts), else 0: one-token
    responses, so the reward and the KL penalty act on the same distribution. After a round of RLOO the policy's
    probability of T (its expected reward, computed exactly) has risen; with a large beta it stays near its start
    and the KL reached is smaller.

    Measured over seeds 0-7 and two samplers (transformers' and a nucleus sampler of our own; 2026-12): without
    the KL term T's probability rises from 0.01-0.14 to 0.43-1.00; with beta 5 it ends within 0.1 of its start
    and the first-token KL to the reference is 2.4-20x smaller. Before, this test used 4-token responses, the
    commonest first token and learning rate 1e-2: the KL term's noise on the later tokens, under Adam, drove T's
    probability to 0.001-0.16 in five of six seeds, and a token that only one prompt ever produced could be
    rewarded (no advantage anywhere): the check depended on the seed."""
    import collections
    import shutil

    from rlaif.generate.hf import encode_prompts
    from rlaif.models import load_model, load_tokenizer
    from rlaif.stages import rl

    peaked = tmp_path / "peaked"  # a random tiny model is nearly uniform; larger weights give it preferences
    model = load_model(tiny_model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    model.save_pretrained(peaked)
    load_tokenizer(tiny_model).save_pretrained(peaked)
    chosen = {}

    def reward(r, rollouts):
        if "t" not in chosen:  # the token that splits the most prompts' rollouts (some have it, some not)
            groups = collections.defaultdict(list)
            for x in rollouts:
                groups[x["prompt_id"]].append(x["token_ids"][0])
            split = collections.Counter(t for g in groups.values() for t in set(g) if g.count(t) < len(g))
            chosen["t"] = split.most_common(1)[0][0]
        return [float(x["token_ids"][0] == chosen["t"]) for x in rollouts]

    monkeypatch.setattr(rl, "rewards", reward)
    tok = load_tokenizer(str(peaked))
    prompts = [json.loads(line)["prompt"] for line in (tiny_run / "prompts.jsonl").read_text().splitlines()]
    ids = encode_prompts(tok, prompts, 1000)[0]

    def first_tokens(path):  # each prompt's distribution of the response's (only) token
        m = load_model(path)
        with torch.inference_mode():
            return [torch.softmax(m(input_ids=torch.tensor([i])).logits[0, -1].double(), -1) for i in ids]

    def mean(xs):
        return sum(xs) / len(xs)

    out = {}
    for beta in (0.0, 5.0):
        d = tmp_path / f"beta{beta}"
        shutil.copytree(tiny_run, d)
        sets = [
            f"model.policy={json.dumps(str(peaked))}",
            f"round.stages={RL}",
            "generate.samples_per_prompt=8",
            "generate.max_new_tokens=1",
            "generate.temperature=1.0",
            "rl.learning_rate=5e-3",
            "rl.epochs=3",
            "rl.batch_size=8",
            "rl.kl=loss",
            f"rl.beta={beta}",
            "rl.whiten_rewards=false",
        ]
        (m,) = run(d, rounds=1, overrides=sets)
        assert m["rl"]["kl_last"] >= 0
        start, end = first_tokens(str(peaked)), first_tokens(round_model(d, 1))
        out[beta] = (
            mean([p[chosen["t"]].item() for p in start]),  # the expected reward, exactly
            mean([p[chosen["t"]].item() for p in end]),
            mean([(q * (q.log() - p.log())).sum().item() for p, q in zip(start, end, strict=True)]),  # KL
        )
    (before, free, kl_free), (_, held, kl_held) = out[0.0], out[5.0]
    assert free > before + 0.3  # the rewarded token became clearly more likely
    assert abs(held - before) < 0.5 * (free - before)  # a large beta holds it near its start ...
    assert 0 <= kl_held < 0.5 * kl_free  # ... and the KL to the reference lower


@pytest.mark.parametrize("mode", ["shaped", "likelihood"])
def test_guided_responses_join_the_rollouts_as_off_policy_data(
    tiny_run, tiny_model, tmp_path, monkeypatch, capsys, mode
):
    """With rl.off_policy, a prompt's guided response is one of its rollouts: in its RLOO group, its token ids
    the whole reply (the guidance's prefix, which the generator was given, then the continuation), trained with the
    mode's off-policy loss and no KL term; the plain rollouts keep the clipped ratio and the KL. Without the key the
    run stops before its first stage, naming it."""
    import rlaif.losses as losses
    from rlaif.cli import main
    from rlaif.models import load_tokenizer
    from rlaif.stages.rl import RLTask
    from tests.conftest import opposite_heads
    from tests.test_guidance import GUIDE, PREFIX, _constitution, _guided_run, _labelled_run

    stages = ['round.stages=["generate", "rl", "merge"]', "generate.samples_per_prompt=3", "rl.batch_size=3"]
    (tmp_path / "refused").mkdir()
    harm, helpful = opposite_heads(tmp_path / "refused", tiny_model)
    c = _constitution(tmp_path / "refused", f"[guidance]\nharmlessness = {json.dumps(GUIDE)}\n",
                      {"harmlessness": harm, "helpfulness": helpful})  # fmt: skip
    refused = _labelled_run(tiny_run, tmp_path / "refused")
    sets = ["judge.mode=reward", "judge.applicability=label", f"judge.constitution={json.dumps(str(c))}",
            "generate.guided_samples=1", *stages]  # fmt: skip
    assert main(["run", str(refused), "--rounds", "1", *sum((["--set", s] for s in sets), [])]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "generate.guided_samples" in err and "rl.off_policy" in err
    assert not (refused / "round_1").exists()
    ppo = ["--set", f"rl.off_policy={mode}", "--set", "rl.algorithm=ppo"]
    assert main(["run", str(refused), "--rounds", "1", *sum((["--set", s] for s in sets), []), *ppo]) == 2
    assert 'rloo" or "grpo' in " ".join(capsys.readouterr().err.split())
    # refused before the first stage, not when the rl stage reads the responses
    assert not (refused / "round_1").exists()

    calls = {"shaped": [], "likelihood": 0, "clipped": 0, "k3": 0}
    tasks = []
    for name, key in (
        ("clipped_policy_loss", "clipped"),
        ("kl_k3", "k3"),
        ("likelihood_off_policy_loss", "likelihood"),
    ):
        real = getattr(losses, name)
        monkeypatch.setattr(
            losses, name, lambda *a, _r=real, _k=key, **k: calls.__setitem__(_k, calls[_k] + 1) or _r(*a, **k)
        )
    real_shaped = losses.shaped_off_policy_loss
    monkeypatch.setattr(
        losses,
        "shaped_off_policy_loss",
        lambda logp, adv, g: calls["shaped"].append(g) or real_shaped(logp, adv, g),
    )
    real_prepare = RLTask.prepare
    monkeypatch.setattr(
        RLTask, "prepare", lambda self, m, d, p: tasks.append((self, d)) or real_prepare(self, m, d, p)
    )
    run = _guided_run(tiny_run, tiny_model, tmp_path, "sentences = 0", 1, *stages, f"rl.off_policy={mode}",
                      "rl.off_policy_gamma=0.25",
                      "rl.kl=loss", "rl.epochs=2")  # fmt: skip

    responses = read_jsonl(run / "round_1" / "responses.jsonl")
    guided = [bool(x.get("guidance")) for x in responses]
    assert sum(guided) == 8  # one per prompt: harmful ones under GUIDE, benign ones begun with PREFIX
    assert sum(x.get("prefix") == PREFIX for x in responses) == 4
    ((task, data),) = tasks
    assert task.off_policy == guided
    assert sorted(i for g in task.groups for i in g) == list(range(24)) and all(
        len(g) == 3 for g in task.groups
    )
    tok = load_tokenizer(tiny_model)
    prefix = tok(PREFIX, add_special_tokens=False).input_ids
    for x, (ids, start), g in zip(responses, data, guided, strict=True):
        reply = ids[start:]
        if g and x.get("prefix"):  # the prefix, then the ids the model sampled after it
            assert (
                reply[: len(prefix)] == prefix
                and reply[len(prefix) : len(prefix) + len(x["token_ids"])] == x["token_ids"]
            )
        else:
            assert reply[: len(x["token_ids"])] == x["token_ids"]
        if x["finished"]:
            assert reply[-1] == tok.eos_token_id
    # 2 epochs: each guided rollout twice through the mode's loss (shaped: gamma as set), each plain one through
    # the clipped ratio and the k3 term
    if mode == "shaped":
        assert calls["shaped"] == [0.25] * 16 and calls["likelihood"] == 0
    else:
        assert calls["shaped"] == [] and calls["likelihood"] == 16
    assert calls["clipped"] == 32 and calls["k3"] == 32
    m = json.loads((run / "round_1" / "metrics.json").read_text())
    assert m["rl"]["off_policy"] == 8 and m["rl"]["rollouts"] == 24


def test_guided_rollouts_are_checked_and_made_whole_replies(tiny_model, tmp_path):
    """Responses written elsewhere (a copied round, a changed config) are checked when the stage reads them: guided
    ones need rl.off_policy and RLOO / GRPO. A prefixed one's ids become the prefix's then the continuation's; one
    ended at a sentence, finished without a sampled EOS, gets one; one with no ids is left to be re-tokenized."""
    from types import SimpleNamespace

    from rlaif.checks import ConfigError
    from rlaif.config.rl import RLConfig
    from rlaif.models import load_tokenizer
    from rlaif.stages.rl import guided_rollouts

    tok = load_tokenizer(tiny_model)

    def round_(**rl):
        pool = SimpleNamespace(tokenizer=lambda model: tok)
        return SimpleNamespace(
            config=SimpleNamespace(rl=RLConfig(**rl)), dir=tmp_path, pool=pool, model=tiny_model
        )

    cont = tok(" then more", add_special_tokens=False).input_ids
    rows = [
        {"text": "plain", "finished": True, "token_ids": [5, 6, tok.eos_token_id]},
        {
            "text": "Sure. then more",
            "finished": False,
            "token_ids": list(cont),
            "tokens": len(cont),
            "guidance": "helpfulness",
            "prefix": "Sure.",
        },  # fmt: skip
        {"text": "No.", "finished": True, "token_ids": [7, 8], "guidance": "harmlessness", "sentences": 1},
        {"text": "No", "finished": True, "token_ids": [], "guidance": "harmlessness"},
    ]
    with pytest.raises(ConfigError, match="rl.off_policy"):
        guided_rollouts(round_(), [dict(r) for r in rows])
    with pytest.raises(ConfigError, match="rl.algorithm"):
        guided_rollouts(round_(off_policy="likelihood", algorithm="ppo"), [dict(r) for r in rows])
    got = [dict(r) for r in rows]
    assert guided_rollouts(round_(off_policy="likelihood"), got) == [False, True, True, True]
    assert got[0]["token_ids"] == [5, 6, tok.eos_token_id]  # the policy's own: as sampled
    assert (
        got[1]["token_ids"] == tok("Sure.", add_special_tokens=False).input_ids + cont
    )  # unfinished: no EOS
    # its length (rl.length_penalty) counts the prefix too
    assert got[1]["tokens"] == len(got[1]["token_ids"])
    assert got[2]["token_ids"] == [7, 8, tok.eos_token_id]
    assert got[3]["token_ids"] == []
    assert guided_rollouts(round_(), [dict(rows[0])]) == [False]  # no guided response: nothing to refuse
