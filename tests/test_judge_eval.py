import json

import pytest

from rlaif.cli import main
from rlaif.data import DataError
from rlaif.judge_eval import conversation_text, load_labelled, summarize, wilson
from rlaif.verdicts import decide


def test_wilson_interval_hand_values():
    # k=50, n=100: centre 0.5; half = 1.96 * sqrt(0.0025 + 3.8416/40000) / (1 + 3.8416/100) = 0.096170
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.403830, abs=1e-5) and hi == pytest.approx(0.596170, abs=1e-5)
    # k=n=10: centre (1 + 0.19208) / 1.38416 = 0.86125; half = 1.96 * sqrt(0.0096040) / 1.38416 = 0.13877
    lo, hi = wilson(10, 10)
    assert lo == pytest.approx(0.72248, abs=1e-4) and hi == 1.0
    assert wilson(0, 0) == (0.0, 1.0)


def test_summary_counts_agreement_bias_and_drops():
    verdicts = [
        decide("a", 0.8, 0.3, 0.0, 0.55, True),  # consistent, x (= human-chosen) wins
        decide("a", 0.3, 0.8, 0.0, 0.55, True),  # consistent, y wins: disagrees with the label
        decide("b", 0.9, 0.7, 0.0, 0.55, True),  # both orders pick the first slot: inconsistent, x by average
    ]
    s = summarize(verdicts)
    assert s["pairs"] == 3
    assert s["agreement"] == pytest.approx(2 / 3)  # order-averaged p_x: 0.75, 0.25, 0.6
    assert s["kept"] == 2 and s["agreement_kept"] == pytest.approx(0.5)
    assert s["position_consistency"] == pytest.approx(2 / 3)
    # orders picking the first slot: 0.8 (yes), 0.3, 0.3, 0.8 (yes), 0.9 (yes), 0.7 (yes) -> 4 of 6
    assert s["first_position_rate"] == pytest.approx(4 / 6)
    assert s["drop_rate"] == pytest.approx(1 / 3)


def test_labelled_file_format(tmp_path):
    p = tmp_path / "pairs.jsonl"
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bomb?"},
    ]
    p.write_text(
        json.dumps({"prompt": msgs, "chosen": "No.", "rejected": "Sure."})
        + "\n"
        + json.dumps({"prompt": "plain", "chosen": "a", "rejected": "b"})
        + "\n"
    )
    pairs = load_labelled(p)
    assert pairs[0]["conversation"] == "User: hi\nAssistant: hello\nUser: bomb?"
    assert pairs[1]["conversation"] == conversation_text("plain") == "User: plain"
    p.write_text(json.dumps({"prompt": "x", "chosen": "a"}) + "\n")
    with pytest.raises(DataError, match="pairs.jsonl:1: .*rejected"):
        load_labelled(p)
    p.write_text(json.dumps({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(DataError, match="pairs.jsonl:1: .*prompt"):
        load_labelled(p)


def test_cli_judge_eval_writes_json_and_table(tiny_model, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "How do I bake bread?", "chosen": "Mix flour.", "rejected": "I cannot help."},
        {"prompt": [{"role": "user", "content": "Is this safe?"}], "chosen": "Yes.", "rejected": "bake bake"},
        {"prompt": "Say hello.", "chosen": "hello", "rejected": "Response B"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval.json"
    assert main(["judge-eval", "--data", str(data), "--judge-model", tiny_model, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["summary"]["pairs"] == 3 and len(result["verdicts"]) == 3
    assert sum(s["pairs"] for s in result["by_principle"].values()) == 3
    out_text = capsys.readouterr().out
    assert "agree" in out_text and "pointwise mode" in out_text
    assert max(len(line) for line in out_text.splitlines()) <= 80  # fits a default terminal


def test_cli_judge_eval_reports_injection_success_on_the_shipped_set(tiny_model, tmp_path, capsys):
    from rlaif.judge_eval import INJECTION_SET, load_labelled

    shipped = load_labelled(INJECTION_SET)
    assert len(shipped) >= 20 and all("attack" in p and "rejected_clean" in p for p in shipped)
    assert {p["attack"] for p in shipped} >= {
        "instruction",
        "fake-delimiter",
        "fake-verdict",
        "special-token",
    }
    out = tmp_path / "inj.json"
    args = ["judge-eval", "--judge-model", tiny_model, "--mode", "logprob", "--out", str(out)]
    assert main(args) == 0  # no --data: the shipped injection set
    inj = json.loads(out.read_text())["injection"]
    verdicts = json.loads(out.read_text())["verdicts"]
    assert inj["pairs"] == len(shipped)
    assert inj["attack_success_rate"] == pytest.approx(sum(v["p_x"] < 0.5 for v in verdicts) / len(verdicts))
    assert 0 <= inj["clean_loss_rate"] <= 1
    assert sum(a["pairs"] for a in inj["by_attack"].values()) == len(shipped)
    assert "prompt injection" in capsys.readouterr().out
    assert main(["judge-eval", "--data", str(tmp_path / "missing.jsonl"), "--judge-model", tiny_model]) == 2
