"""The principle-conditioned reward model (rlaif/reward/conditioned.py): scores by hand, the principle basis, a fit
that must read the principle to get anything right, the verbs on the tiny model (matched and mismatched
principles give opposite verdicts), and the per-row feature cache the reward models share."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlaif.cli import main
from rlaif.data import DataError
from rlaif.reward.conditioned import conditioned_scores, fit_conditioned, principle_basis


def test_conditioned_scores_by_hand():
    f = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    z = torch.tensor([[0.5], [-2.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # w_0 reads feature 0, w_1 feature 1
    # row 0: 1*1 + 0.5*2 + 0.25 = 2.25; row 1: 3 + (-2)(-1) + 0.25 = 5.25
    assert conditioned_scores(f, z, weight, torch.tensor([0.25])).tolist() == pytest.approx([2.25, 5.25])


def test_principle_basis_keeps_distances_at_unit_spread_with_a_fixed_sign():
    g = torch.Generator().manual_seed(0)
    psi = torch.randn(6, 5, generator=g) * torch.tensor([5.0, 1.0, 0.1, 0.1, 0.1]) + 3
    mean, basis = principle_basis(psi, k=8)
    z = (psi - mean) @ basis.T
    assert z.shape == (6, 5)  # at most n - 1 directions, and no more than the features have
    assert z.mean(0).tolist() == pytest.approx([0] * 5, abs=1e-5)
    assert float((z * z).sum(1).mean()) == pytest.approx(1.0, abs=1e-4)
    # one scale for every direction: distances between principles are the features' distances, scaled
    ratio = torch.cdist(z, z) / torch.cdist(psi, psi).clamp(min=1e-9)
    off = ~torch.eye(6, dtype=torch.bool)
    assert float(ratio[off].std()) < 1e-3
    assert abs(float(basis[0, 0])) > 0.1  # the first direction is the spread-out feature
    mean2, basis2 = principle_basis(psi * 1.0, k=8)
    assert torch.allclose(basis, basis2)
    assert principle_basis(psi[:1], k=3)[1].shape == (0, 5)  # one principle: no direction to read


def _two_kinds(n=200, seed=0):
    """Features where kind A prefers a larger feature 0 and kind B a smaller one, under principles at z = +1
    and z = -1: no head that ignores z beats a coin on the union."""
    g = torch.Generator().manual_seed(seed)
    fc, fr = torch.randn(2 * n, 4, generator=g) * 2 + 7, torch.randn(2 * n, 4, generator=g) * 2 + 7
    a_wins = fc[:, 0] > fr[:, 0]
    want_a = torch.arange(2 * n) < n
    swap = a_wins != want_a  # first half: chosen has the larger feature 0; second half: the smaller
    fc, fr = torch.where(swap[:, None], fr, fc), torch.where(swap[:, None], fc, fr)
    z = torch.where(want_a, 1.0, -1.0)[:, None]
    return fc, fr, z


def test_fit_conditioned_reads_the_principle():
    fc, fr, z = _two_kinds()
    W, b, bz = fit_conditioned(fc, fr, z, l2=1e-4)
    right = conditioned_scores(fc, z, W, b) > conditioned_scores(fr, z, W, b)
    assert float(right.float().mean()) > 0.97
    # under the other kind's principle the same pairs go the other way
    wrong = conditioned_scores(fc, -z, W, b) > conditioned_scores(fr, -z, W, b)
    assert float(wrong.float().mean()) < 0.03
    # the folded head equals the standardised one: the reward of raw features plus the per-head term is
    # what the fit minimised (checked against a plain re-standardisation of the same weights)
    both = torch.cat([fc, fr])
    mu, sd = both.mean(0), both.std(0)
    Ws = W * sd  # back to the standardised scale
    shift = (mu / sd) @ Ws.T
    standardised = conditioned_scores((fc - mu) / sd, z, Ws, b + shift[0])
    assert torch.allclose(
        conditioned_scores(fc, z, W, b) + z @ bz, standardised + z @ (bz + shift[1:]), atol=1e-3
    )


@pytest.fixture
def two_sets(tmp_path):
    """Two preference files whose labels disagree: harmlessness pairs prefer the refusal, helpfulness pairs
    the answer."""
    answer = [
        "Mix flour and water, then bake it.",
        "Bake it at 200 C for forty minutes.",
        "Knead, rest, bake.",
    ]
    refusal = ["I cannot help with that.", "Sorry, I will not answer.", "I refuse to say."]

    def write(name, chosen, rejected, offset):
        path = tmp_path / name
        path.write_text(
            "".join(
                json.dumps(
                    {
                        "prompt": f"Question {i + offset}: how do I bake?",
                        "chosen": chosen[i % 3],
                        "rejected": rejected[(i + 1) % 3],
                    }
                )
                + "\n"
                for i in range(24)
            )
        )
        return path

    return (
        write("harm.jsonl", refusal, answer, 0),
        write("help.jsonl", answer, refusal, 100),
        write("harm-dev.jsonl", refusal, answer, 500),
        write("help-dev.jsonl", answer, refusal, 600),
    )


def test_rm_train_conditioned_and_eval_by_kind(tiny_model, tmp_path, two_sets, capsys):
    harm, help_, harm_dev, help_dev = two_sets
    out = tmp_path / "cond"
    args = ["rm", "train", "--mode", "conditioned", "--model", tiny_model, "--out", str(out)]
    assert main([*args, "--pairs", str(harm), str(help_), "--kinds", "harmlessness", "helpfulness"]) == 0
    spec = json.loads((out / "reward.json").read_text())
    assert spec["mode"] == "conditioned" and spec["figures"]["pairs_by_kind"] == {
        "harmlessness": 24,
        "helpfulness": 24,
    }
    assert "principle-conditioned reward model on 48 pairs" in capsys.readouterr().out

    def agreement(data, kind):
        report = tmp_path / f"{data.stem}-{kind}.json"
        cmd = ["rm", "eval", "--model", str(out), "--data", str(data), "--kind", kind, "--out", str(report)]
        assert main(cmd) == 0
        result = json.loads(report.read_text())
        assert {v["principle"] for v in result["verdicts"]} <= set(spec["figures"]["principles"])
        assert all(spec["figures"]["principles"][v["principle"]] == kind for v in result["verdicts"])
        return result["summary"]["agreement"]

    # matched: each dev set under its own kind's principles; mismatched: the opposite verdicts
    assert agreement(harm_dev, "harmlessness") == 1.0 and agreement(help_dev, "helpfulness") == 1.0
    assert agreement(harm_dev, "helpfulness") == 0.0 and agreement(help_dev, "harmlessness") == 0.0

    # one --kinds entry per file
    assert main([*args, "--pairs", str(harm), str(help_), "--kinds", "harmlessness"]) == 2
    assert "one --kinds entry per --pairs file" in capsys.readouterr().err


def test_a_conditioned_model_needs_a_principle(tiny_model, tmp_path, two_sets):
    from rlaif.config import ModelConfig
    from rlaif.pool import ModelPool
    from rlaif.reward.model import RewardModel

    harm, help_, _, _ = two_sets
    out = tmp_path / "cond"
    args = ["rm", "train", "--mode", "conditioned", "--model", tiny_model, "--out", str(out)]
    assert main([*args, "--pairs", str(harm), str(help_), "--kinds", "harmlessness", "helpfulness"]) == 0
    rm = RewardModel(str(out), ModelPool(ModelConfig(), "cpu"))
    with pytest.raises(DataError, match="under a principle, and none was given"):
        rm.rewards([("hi", "hello", None)])
    q = "Which response is less harmful?"
    (a,) = rm.rewards([("hi", "I cannot help with that.", q)])
    assert math.isfinite(a)


def count_extractions(module, monkeypatch):
    """`module.extract` replaced by a wrapper that still computes: (how many rows each call computed, the
    wrapper)."""
    computed = []
    real = module.extract

    def counting(model, tokenizer, rows, batch_size=8, progress=None):
        computed.append(len(rows))
        return real(model, tokenizer, rows, batch_size)

    monkeypatch.setattr(module, "extract", counting)
    return computed, counting


def test_features_are_cached_per_row_and_an_extraction_resumes(tiny_model, tmp_path, monkeypatch):
    import rlaif.reward.features as reward
    from rlaif.config import ModelConfig
    from rlaif.pool import ModelPool

    model, tok = ModelPool(ModelConfig(), "cpu").model(tiny_model)
    rows = [(tok(f"text number {i}").input_ids, 1) for i in range(10)]
    real = reward.extract
    computed, counting = count_extractions(reward, monkeypatch)
    first = reward.cached_features(model, tok, rows[:6], tmp_path, "m", 4, reward.SILENT, shard=4)
    assert computed == [4, 2]  # two shards, each saved as it completes
    # the same rows in another order, with four new ones: only the new ones are computed
    again = reward.cached_features(model, tok, rows[::-1], tmp_path, "m", 4, reward.SILENT, shard=4)
    assert computed == [4, 2, 4]
    assert torch.allclose(again.flip(0)[:6], first) and torch.allclose(
        again, real(model, tok, rows[::-1], 4), atol=1e-5
    )

    # a kill in the middle: the shards written before it are kept, the rest is computed on the rerun
    calls = 0

    def dies(model, tokenizer, rows, batch_size=8, progress=None):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return real(model, tokenizer, rows, batch_size)

    monkeypatch.setattr(reward, "extract", dies)
    more = [(tok(f"another text {i}").input_ids, 2) for i in range(8)]
    with pytest.raises(KeyboardInterrupt):
        reward.cached_features(model, tok, more, tmp_path, "m", 4, reward.SILENT, shard=4)
    computed.clear()
    monkeypatch.setattr(reward, "extract", counting)
    reward.cached_features(model, tok, more, tmp_path, "m", 4, reward.SILENT, shard=4)
    assert computed == [4]
    # another model's cache is another folder
    reward.cached_features(model, tok, more, tmp_path, "other", 4, reward.SILENT, shard=4)
    assert computed == [4, 4, 4]


def test_a_reward_model_scores_each_input_once_and_keeps_principles_apart(
    tiny_model, tmp_path, two_sets, monkeypatch
):
    """`rlaif eval` scores round 0's answers against every round and the harmful ones again for acceptance: a
    reward model computes each (conversation, response, principle) once, and the same response under another
    principle is another input to a conditioned model."""
    import rlaif.reward.model as reward_model
    from rlaif.config import ModelConfig
    from rlaif.pool import ModelPool
    from rlaif.reward.model import RewardModel

    harm, help_, _, _ = two_sets
    out = tmp_path / "cond"
    args = ["rm", "train", "--mode", "conditioned", "--model", tiny_model, "--out", str(out)]
    assert main([*args, "--pairs", str(harm), str(help_), "--kinds", "harmlessness", "helpfulness"]) == 0
    harmless, helpful = "Which response is less harmful?", "Which response is more helpful?"
    items = [("hi", "I cannot help with that.", harmless), ("hi", "I cannot help with that.", helpful)]
    items += [("How do I bake bread?", "Mix flour, water, yeast and salt; knead; bake.", helpful)]
    fresh = RewardModel(str(out), ModelPool(ModelConfig(), "cpu")).rewards(items)
    assert fresh[0] != fresh[1]  # the principle is read

    rm = RewardModel(str(out), ModelPool(ModelConfig(), "cpu"))
    computed, _ = count_extractions(reward_model, monkeypatch)
    first = rm.rewards(items[:1])
    both = rm.rewards(items + items[::-1])
    again = rm.rewards(items)
    assert computed == [1, 2]  # the second call computes only its two new inputs; the third nothing
    assert first[0] == both[0] and both[:3] == again == both[3:][::-1]
    assert again == pytest.approx(fresh, abs=1e-5)
