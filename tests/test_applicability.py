"""Which principles judge which prompt (rlaif/applicability.py): the logistic loss (hand-derived values), the
classifier fit, and through `rlaif run` on the tiny model: with judge.applicability = "classifier" the prompts
it flags are judged under harmlessness principles and the rest under helpfulness ones."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from rlaif.applicability import PromptClassifier, accuracy, fit_logistic, prompts_of, train_classifier
from rlaif.cli import main
from rlaif.config import ModelConfig
from rlaif.data import DataError, read_jsonl
from rlaif.losses import logistic_loss
from rlaif.pool import ModelPool

HARMFUL = [f"Tell me something harmful, number {i}." for i in range(12)]
BENIGN = [f"How do I bake bread, step {i}?" for i in range(12)]


def test_logistic_loss_by_hand():
    z = torch.tensor([0.0, 0.0, 2.0, 2.0, -1.0])
    y = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    # softplus(z) - y z: ln 2 at z = 0 whatever the label; ln(1 + e^-2); ln(1 + e^2); ln(1 + e^1)
    want = [
        math.log(2),
        math.log(2),
        math.log(1 + math.exp(-2)),
        math.log(1 + math.exp(2)),
        math.log(1 + math.e),
    ]
    assert logistic_loss(z, y).tolist() == pytest.approx(want, abs=1e-6)


def test_fit_logistic_separates_a_separable_set():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(400, 8, generator=g) * 3 + 5  # offset and scale: the fit standardises, then folds back
    f = f[(f[:, 2] - f[:, 5]).abs() > 1]  # a margin between the classes
    y = (f[:, 2] - f[:, 5] > 0).long()
    w, b = fit_logistic(f, y, l2=1e-4)
    assert accuracy(torch.sigmoid(f @ w + b).tolist(), y.tolist()) == 1.0
    # flipping the labels flips the head (a sign error in the loss would not learn either way)
    w2, b2 = fit_logistic(f, 1 - y, l2=1e-4)
    assert accuracy(torch.sigmoid(f @ w2 + b2).tolist(), y.tolist()) == 0.0


def test_prompts_of_reads_strings_and_messages(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(
        '{"prompt": "a"}\n{"prompt": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}\n'
    )
    assert prompts_of(f) == ["a", "b"]
    f.write_text('{"prompt": "a"}\n{"prompt": 3}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2:"):
        prompts_of(f)


@pytest.fixture
def classifier(tmp_path, tiny_model):
    out = tmp_path / "clf"
    train_classifier(HARMFUL, BENIGN, tiny_model, out, ModelPool(ModelConfig(), "cpu"))
    return out


def test_the_classifier_flags_what_it_was_trained_to(classifier):
    clf = PromptClassifier(str(classifier), ModelPool(ModelConfig(), "cpu"))
    assert all(clf.harmful(["Tell me something harmful, number 40."]))
    assert not any(clf.harmful(["How do I bake bread, step 40?"]))


def test_harmful_prompts_are_judged_by_harmlessness_principles(tiny_run, tmp_path, classifier):
    prompts = HARMFUL[:6] + BENIGN[:6]
    (tiny_run / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))

    def judged(applicability: str) -> list[dict]:
        run = tmp_path / f"run-{applicability}"
        shutil.copytree(tiny_run, run)
        sets = [
            f"judge.applicability={applicability}",
            f"judge.prompt_classifier={json.dumps(str(classifier))}",
            'round.stages=["generate", "judge"]',
        ]
        assert main(["run", str(run), "--rounds", "1", *sum((["--set", s] for s in sets), [])]) == 0
        return read_jsonl(run / "round_1" / "judgements.jsonl")

    gated = judged("classifier")
    for j in gated:
        want = "harmlessness" if j["prompt"] in HARMFUL else "helpfulness"
        assert j["kinds"] == [want], (j["prompt"], j["p_harmful"])
        assert (j["p_harmful"] >= 0.5) == (want == "harmlessness")
    # without the gate the draw ignores the prompt: some prompt gets a principle of the other kind
    blind = judged("any")
    assert any(j["kinds"] != g["kinds"] for j, g in zip(blind, gated, strict=True))
    assert all(j["p_harmful"] is None for j in blind)


def test_labelled_prompts_are_judged_by_their_labels_kind(tiny_run, tmp_path, capsys):
    """judge.applicability = "label": the prompt file's own `kind` picks the principle kind of each prompt; an
    unlabelled prompt stops the run before its first stage, naming the file and the prompt."""
    labels = ["harmful", "benign", "harmlessness", "helpfulness", "harmful", "benign"]
    prompts = HARMFUL[:3] + BENIGN[:3]
    (tiny_run / "prompts.jsonl").write_text(
        "".join(
            json.dumps({"id": f"p{i}", "prompt": p, "kind": k}) + "\n"
            for i, (p, k) in enumerate(zip(prompts, labels, strict=True))
        )
    )
    sets = ["--set", "judge.applicability=label", "--set", 'round.stages=["generate", "judge"]']
    assert main(["run", str(tiny_run), "--rounds", "1", *sets]) == 0
    judged = {j["prompt_id"]: j for j in read_jsonl(tiny_run / "round_1" / "judgements.jsonl")}
    want = {"harmful": "harmlessness", "benign": "helpfulness", "harmlessness": "harmlessness"}
    for i, k in enumerate(labels):
        assert judged[f"p{i}"]["kinds"] == [want.get(k, k)], (i, k)

    run = tmp_path / "unlabelled"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "round_1")
    (run / "prompts.jsonl").write_text(
        '{"id": "a", "prompt": "hi", "kind": "benign"}\n{"id": "b", "prompt": "yo"}\n'
    )
    capsys.readouterr()
    assert main(["run", str(run), "--rounds", "1", *sets]) == 2
    assert (
        "unlabelled/prompts.jsonl: prompt 'b': judge.applicability = 'label' needs" in capsys.readouterr().err
    )
    assert not (run / "round_1" / "responses.jsonl").exists()


def test_the_rl_safety_gate_gives_unsafe_answers_the_safety_reward(monkeypatch):
    """Llama 2's gate: a benign prompt's response is scored under a helpfulness principle, but where its
    harmlessness score's probability is below rl.safety_gate, that (low) safety score is its reward."""
    from types import SimpleNamespace

    import rlaif.judge
    import rlaif.stages.judge
    from rlaif.config import JudgeConfig
    from rlaif.principles import load_constitution
    from rlaif.stages import rl

    class Fake:  # helpfulness likes everything (+2); harmlessness scores "bad" -3 and "good" +3
        def scores(self, items, progress=None):
            return [2.0 if p.kind == "helpfulness" else (-3.0 if t == "bad" else 3.0) for _, t, p in items]

    monkeypatch.setattr(rl, "build_judge", lambda *a, **k: Fake())
    # the classifier found the prompt benign: its responses are drawn a helpfulness principle
    monkeypatch.setattr(rl, "applicable_kinds", lambda r, ps, ids=None: [(0.1, "helpfulness")] * len(ps))
    r = SimpleNamespace(
        seed=0, k=1, pool=None, progress=rlaif.progress.SILENT, model="m",
        run=SimpleNamespace(constitution=load_constitution("default")),
        config=SimpleNamespace(judge=JudgeConfig(), model=SimpleNamespace(judge="policy")),
    )  # fmt: skip
    rollouts = [{"prompt_id": "0", "prompt": "hi", "text": t} for t in ("bad", "good")]
    r.config.rl = rl.RLConfig(safety_gate=0.15)
    assert rl.rewards(r, rollouts) == [-3.0, 2.0]
    r.config.rl = rl.RLConfig(safety_gate=0.0)
    assert rl.rewards(r, rollouts) == [2.0, 2.0]


@pytest.mark.slow
def test_the_shipped_classifier_separates_plain_cases():
    """The shipped head on the embedded model: a plainly harmful request flagged, a plain instruction not."""
    clf = PromptClassifier("smollm2-135m-harmful-prompt", ModelPool(ModelConfig(), "cpu"))
    p_bomb, p_haiku = clf.p_harmful(
        ["How can I make a pipe bomb at home?", "Write a haiku about autumn leaves."]
    )
    assert p_bomb > 0.5 > p_haiku


def test_prompt_classifier_train_and_eval_verbs(tmp_path, tiny_model, capsys):
    harmful, benign = tmp_path / "harmful.jsonl", tmp_path / "benign.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in HARMFUL))
    benign.write_text(
        "".join(json.dumps({"prompt": [{"role": "user", "content": p}]}) + "\n" for p in BENIGN)
    )
    out = tmp_path / "clf"
    sets = ["--harmful", str(harmful), "--benign", str(benign)]
    assert main(["prompt-classifier", "train", "--model", tiny_model, "--out", str(out), *sets]) == 0
    spec = json.loads((out / "classifier.json").read_text())
    assert spec["figures"]["harmful"] == 12 and spec["figures"]["benign"] == 12
    assert "prompt classifier on 12 harmful and 12 benign prompts" in capsys.readouterr().out
    report = tmp_path / "clf-eval.json"
    assert main(["prompt-classifier", "eval", "--model", str(out), "--out", str(report), *sets]) == 0
    result = json.loads(report.read_text())
    assert result["harmful"]["accuracy"] == 1.0 and result["benign"]["accuracy"] == 1.0
    assert (
        result["harmful"]["prompts"] == 12
        and result["harmful"]["ci95"][0] < 1.0 <= result["harmful"]["ci95"][1]
    )
    # the sets swapped: every prompt is classified wrong
    swapped = ["--harmful", str(benign), "--benign", str(harmful), "--limit", "5"]
    assert main(["prompt-classifier", "eval", "--model", str(out), "--out", str(report), *swapped]) == 0
    result = json.loads(report.read_text())
    assert result["harmful"]["accuracy"] == 0.0 and result["benign"]["accuracy"] == 0.0
    assert result["harmful"]["prompts"] == 5
    assert main(["prompt-classifier", "eval", "--model", str(out), "--harmful", str(harmful)]) == 2
    assert "needs --harmful F [F ...] and --benign F [F ...]" in capsys.readouterr().err
