"""Behaviour logs (rlaif/feedback.py, `rlaif feedback`): checking, KTO examples by rule, implied pairs,
behaviour text, the simulated log."""

from __future__ import annotations

import json

import pytest

from rlaif.cli import main
from rlaif.data import load_feedback, load_preferences, read_jsonl, write_jsonl
from rlaif.feedback import (
    FeedbackError,
    FeedbackRule,
    behaviour_text,
    bin_word,
    implied_pairs,
    import_log,
    kto_examples,
    read_log,
    simulate_log,
)

LOG = [
    {
        "id": "a",
        "conversation": "q1",
        "response": "r1",
        "thumbs": "up",
        "views": 60,
        "clicks": 12,
        "likes": 3,
    },
    {"id": "b", "conversation": "q2", "response": "r2", "regenerated": True},
    {"id": "c", "conversation": "q2", "response": "r3", "regenerated_from": "b", "copied": True},
    {"id": "d", "conversation": "q3", "response": "r4", "thumbs": "up", "rephrased": True},  # conflicting
    {
        "conversation": [{"role": "user", "content": "q4"}],
        "response": "r5",
        "edited_to": "r5, fixed",
        "dislikes": 4,
    },
    {"conversation": "q5", "response": "r6"},  # no signal
]


def write_log(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_rule_labels_by_signal_and_leaves_conflicts_and_silence_out(tmp_path):
    records = read_log(write_log(tmp_path / "log.jsonl", LOG))
    got = [(e["completion"], e["label"]) for e in kto_examples(records, FeedbackRule())]
    assert got == [("r1", True), ("r2", False), ("r3", True), ("r5", False)]
    strict = FeedbackRule(desirable=["thumbs_up"], undesirable=["thumbs_down"])
    assert [e["completion"] for e in kto_examples(records, strict)] == ["r1", "r4"]


def test_implied_pairs_regenerated_loses_and_edit_wins(tmp_path):
    records = read_log(write_log(tmp_path / "log.jsonl", LOG))
    pairs = [(p["chosen"], p["rejected"], p["why"]) for p in implied_pairs(records)]
    assert pairs == [("r3", "r2", "regenerated"), ("r5, fixed", "r5", "edited")]


def test_behaviour_text_smooths_with_log1p_and_bins():
    # log(1 + x): 1 -> 0.69 (no one), 2 -> 1.10 (a few), 11 -> 2.48 (a few), 12 -> 2.56 (some),
    # 53 -> 3.99 (some), 54 -> 4.01 (many)
    assert [bin_word(x) for x in (0, 1, 2, 11, 12, 53, 54)] == [
        "no one",
        "no one",
        "a few",
        "a few",
        "some",
        "some",
        "many",
    ]
    text = behaviour_text({"views": 60, "clicks": 12, "likes": 3, "dislikes": 0})
    assert text == "Many readers viewed it, some clicked through, a few liked it, no one disliked it."
    assert behaviour_text({"thumbs": "up"}) is None


def test_bad_lines_are_all_named_and_nothing_is_imported(tmp_path):
    bad = [
        LOG[0],
        {"conversation": "", "response": "x"},
        {"conversation": "q", "response": "x", "views": -3},
        {"id": "z", "conversation": "q", "response": "x", "regenerated_from": "nope"},
        {"conversation": "q", "response": "x", "thumbs": "sideways"},
    ]
    log = write_log(tmp_path / "log.jsonl", bad)
    out = tmp_path / "out"
    with pytest.raises(FeedbackError) as e:
        import_log(log, out)
    msg = str(e.value)
    assert "4 bad line(s); nothing was imported" in msg
    for lineno in (2, 3, 4, 5):
        assert f"log.jsonl:{lineno}:" in msg
    assert not out.exists()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text("")
    assert main(["feedback", "import", str(log), "--run", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run" / "feedback" / "kto.jsonl").exists()


def test_import_writes_files_the_trainers_read(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("")
    assert main(["feedback", "import", str(write_log(tmp_path / "log.jsonl", LOG)), "--run", str(run)]) == 0
    kto = load_feedback(str(run / "feedback" / "kto.jsonl"))
    assert all(e.get("unpaired") for e in kto) and len(kto) == 4
    assert len(load_preferences(str(run / "feedback" / "pairs.jsonl"))) == 2
    beh = read_jsonl(run / "feedback" / "behaviour.jsonl")
    assert [b["response"] for b in beh] == ["r1", "r5"] and beh[0]["counts"]["views"] == 60


def test_simulated_log_is_seeded_and_liked_answers_are_the_chosen_ones(tmp_path):
    pairs = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(200)]
    a, b = simulate_log(pairs, seed=3), simulate_log(pairs, seed=3)
    assert a == b and len(a) == 400
    log = write_log(tmp_path / "log.jsonl", a)
    examples = kto_examples(read_log(log), FeedbackRule())
    right = sum(e["label"] == e["completion"].startswith("good") for e in examples)
    assert right / len(examples) > 0.9  # the simulation's signals follow the preference labels
    implied = implied_pairs(read_log(log))
    assert implied and all(p["chosen"].startswith("good") for p in implied)
    write_jsonl(tmp_path / "again.jsonl", a)  # the log is plain JSON Lines


def test_feedback_simulate_verb_writes_a_log_that_imports(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(
        pairs, [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(30)]
    )
    log = tmp_path / "sim.jsonl"
    args = ["feedback", "simulate", "--pairs", str(pairs), "--out", str(log), "--limit", "20", "--seed", "1"]
    assert main(args) == 0
    rows = read_jsonl(log)
    # two interactions a pair, from the first 20 pairs, seeded
    assert len(rows) == 40 and rows == simulate_log(read_jsonl(pairs)[:20], seed=1)
    assert "SIMULATED" in capsys.readouterr().out
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("")
    assert main(["feedback", "import", str(log), "--run", str(run)]) == 0  # the simulated log is a valid log
    implied = load_preferences(str(run / "feedback" / "pairs.jsonl"))
    assert implied and all(p["chosen"].startswith("good") for p in implied)
    # a negative limit and an empty pairs file are refused, and nothing is written
    bad = tmp_path / "bad.jsonl"
    with pytest.raises(SystemExit):
        main(["feedback", "simulate", "--pairs", str(pairs), "--out", str(bad), "--limit", "-3"])
    (tmp_path / "empty.jsonl").write_text("")
    assert main(["feedback", "simulate", "--pairs", str(tmp_path / "empty.jsonl"), "--out", str(bad)]) == 2
    assert "empty.jsonl: no preference pairs" in capsys.readouterr().err and not bad.exists()
