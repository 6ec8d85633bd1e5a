"""End-to-end rounds on a tiny model built locally: every stage real, seconds per round."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from rlaif.cli import main
from rlaif.data import read_jsonl
from rlaif.layout import completed_rounds
from rlaif.report import run_report
from rlaif.rounds import run
from tests.conftest import kill_then_rerun


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def same_records(a: Path, b: Path) -> bool:
    """The two JSONL files hold the same records in the same order, floats equal to 1e-5."""
    return _close(read_jsonl(a), read_jsonl(b))


def _close(x, y) -> bool:
    if isinstance(x, float) or isinstance(y, float):
        return isinstance(x, int | float) and isinstance(y, int | float) and abs(x - y) <= 1e-5
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_close(x[k], y[k]) for k in x)
    if isinstance(x, list):
        return (
            isinstance(y, list) and len(x) == len(y) and all(_close(i, j) for i, j in zip(x, y, strict=True))
        )
    return x == y


def test_two_rounds_chain_models_and_write_every_artefact(tiny_run):
    results = run(tiny_run, rounds=2)
    assert completed_rounds(tiny_run) == [1, 2]
    r1, r2 = results
    for k in (1, 2):
        d = tiny_run / f"round_{k}"
        for name in (
            "responses.jsonl",
            "judgements.jsonl",
            "preferences.jsonl",
            "metrics.json",
            "train_log.jsonl",
        ):
            assert (d / name).is_file(), name
        assert (d / "model" / "model.safetensors").is_file() and (d / "adapter").is_dir()
        saved = json.loads((d / "metrics.json").read_text())
        # the names scripts read
        assert saved["generate"]["responses"] == 12 and saved["generate"]["tokens_per_s"] > 0
        assert saved["judge"]["pairs"] == 6 and 0 <= saved["judge"]["kept"] <= 6
        assert 0 <= saved["judge"]["position_consistency"] <= 1
        assert saved["dpo"]["steps"] >= 1
        assert saved["dpo"]["loss_first"] == pytest.approx(math.log(2), abs=5e-3)
        assert saved["dpo"]["loss_last"] is not None and 0 <= saved["dpo"]["reward_accuracy"] <= 1
        assert saved["model"]["path"] == f"round_{k}/model"  # inside the run: stored relative to it
        prefs = read_jsonl(d / "preferences.jsonl")
        assert len(prefs) == saved["judge"]["kept"]
        assert all(p["chosen"] != p["rejected"] and p["round"] == k for p in prefs)
    assert r2["model"]["parent"] == r1["model"]["path"] == "round_1/model"
    assert read_jsonl(tiny_run / "round_2" / "responses.jsonl")[0]["generator"] == "round_1/model"
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert manifest["seed"] == 1 and set(manifest["rounds"]) == {"1", "2"}
    assert manifest["versions"]["torch"]

    # a finished run is not redone
    before = (tiny_run / "round_1" / "metrics.json").stat().st_mtime_ns
    run(tiny_run, rounds=2)
    assert (tiny_run / "round_1" / "metrics.json").stat().st_mtime_ns == before

    console = Console(record=True, width=200)
    console.print(run_report(tiny_run))
    text = console.export_text()
    assert "round" in text and "0.693->" in text
    assert text.count(str(tiny_run.name)) >= 1


def test_resume_after_losing_later_stages_reproduces_records(tiny_run):
    run(tiny_run, rounds=1)
    d = tiny_run / "round_1"
    want = {n: lines(d / n) for n in ("responses.jsonl", "judgements.jsonl", "preferences.jsonl")}
    # as if killed after judging: metrics, preferences and training outputs never written
    for name in ("metrics.json", "preferences.jsonl"):
        (d / name).unlink()
    stages = json.loads((d / "stages.json").read_text())
    del stages["dpo"]
    (d / "stages.json").write_text(json.dumps(stages))
    run(tiny_run, rounds=1)
    for name, content in want.items():
        assert lines(d / name) == content, name


@pytest.mark.parametrize(
    "kill_after",
    [
        "responses.jsonl",  # generation done, judging under way
        "judgements.jsonl",  # judging done, training under way
        "checkpoint/progress.json",  # mid-training, after a checkpoint
        "adapter/adapter_config.json",  # the adapter saved, merging under way
        "train_log.jsonl",  # training done, merged model being saved
    ],
)
def test_sigkill_mid_round_then_rerun_loses_and_duplicates_nothing(tiny_run, tmp_path, kill_after):
    # more prompts and a checkpoint every step, so training has several steps to be killed between
    prompts = [json.dumps({"prompt": f"Question {i}: how do I bake bread?"}) for i in range(10)]
    (tiny_run / "prompts.jsonl").write_text("\n".join(prompts) + "\n")
    sets = ["--set", "dpo.checkpoint_every=1", "--set", "dpo.batch_size=1"]
    reference = tmp_path / "reference"
    reference.mkdir()
    for f in ("config.toml", "prompts.jsonl"):
        (reference / f).write_text((tiny_run / f).read_text())
    run(reference, rounds=1, overrides=[s for s in sets if s != "--set"])

    kill_then_rerun(tiny_run, kill_after, ["--rounds", "1", *sets])
    for name in ("responses.jsonl", "judgements.jsonl", "preferences.jsonl"):
        # the same records, once each; floats to 1e-5 (two processes' forward passes may differ in the last bits)
        assert same_records(tiny_run / "round_1" / name, reference / "round_1" / name), name
    got = json.loads((tiny_run / "round_1" / "metrics.json").read_text())
    want = json.loads((reference / "round_1" / "metrics.json").read_text())
    assert got["dpo"]["steps"] == want["dpo"]["steps"]
    assert got["dpo"]["loss_first"] == pytest.approx(want["dpo"]["loss_first"], abs=1e-6)
    assert got["dpo"]["loss_last"] == pytest.approx(want["dpo"]["loss_last"], abs=1e-4)
    if kill_after.startswith("checkpoint"):
        assert got["dpo"]["resumed_at_step"] >= 1  # training went on from its checkpoint, not from step 0
    got_log = read_jsonl(tiny_run / "round_1" / "train_log.jsonl")
    want_log = read_jsonl(reference / "round_1" / "train_log.jsonl")
    assert [r["step"] for r in got_log] == [r["step"] for r in want_log] == list(range(want["dpo"]["steps"]))
    for a, b in zip(got_log, want_log, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["lr"] == b["lr"]
    assert (
        not list((tiny_run / "round_1").glob(".*.tmp")) and not (tiny_run / "round_1" / "model.tmp").exists()
    )


def test_cli_errors_exit_2_and_name_the_key(tiny_run, capsys):
    assert main(["run", str(tiny_run), "--set", "dpo.betta=1"]) == 2
    err = capsys.readouterr().err
    assert "dpo.betta" in err and "did you mean 'beta'" in err and "Traceback" not in err
    assert main(["run", str(tiny_run), "--set", "model.policy='./no/such/model'"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tiny_run / "prompts.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    assert main(["run", str(tiny_run)]) == 2
    assert "prompts.jsonl:2" in capsys.readouterr().err


def _round(run_dir, k=1):
    from rlaif.config import load_config
    from rlaif.rounds import open_run
    from rlaif.stages import Round

    state = open_run(run_dir, load_config(run_dir))
    d = run_dir / f"round_{k}"
    d.mkdir(exist_ok=True)
    return Round(state, k, d, state.initial, state.initial)


def test_identical_samples_never_become_a_preference_pair(tiny_run):
    from rlaif.data import write_jsonl
    from rlaif.stages import judge, preferences

    r = _round(tiny_run)
    base = {"schema": 1, "round": 1, "tokens": 3, "finished": True, "generator": "g"}
    responses = [
        {**base, "prompt_id": "a", "prompt": "Say hello.", "sample": 0, "text": "hello there"},
        {**base, "prompt_id": "a", "prompt": "Say hello.", "sample": 1, "text": "hello there"},
        {**base, "prompt_id": "b", "prompt": "Bake bread?", "sample": 0, "text": "Mix flour."},
        {**base, "prompt_id": "b", "prompt": "Bake bread?", "sample": 1, "text": "I cannot help."},
    ]
    write_jsonl(r.dir / "responses.jsonl", responses)
    figures = judge.run(r)
    judged = {j["prompt_id"]: j for j in read_jsonl(r.dir / "judgements.jsonl")}
    assert judged["a"]["reason"] == "identical" and not judged["a"]["kept"]
    assert judged["b"]["kept"]  # this run's judge keeps every decided pair
    assert figures["dropped_identical"] == 1 and figures["kept"] == 1
    prefs = preferences.preference_pairs(1, "g", list(judged.values()))
    assert [p["prompt_id"] for p in prefs] == ["b"]
    b = judged["b"]
    winner, loser = (b["x"], b["y"]) if b["score_x"] > b["score_y"] else (b["y"], b["x"])
    assert (prefs[0]["chosen"], prefs[0]["rejected"]) == (winner, loser)


def _judgement(winner, **kw):
    return {
        "prompt_id": "p",
        "prompt": "Bake bread?",
        "x": "Mix flour and water.",
        "y": "No.",
        "x_finished": True,
        "y_finished": False,
        "kept": winner is not None,
        "winner": winner,
        "principle": "answers",
        "p_x": 0.8 if winner == "x" else 0.2,
        "p_first_xy": 0.8,
        "p_first_yx": 0.2,
        "judge": "j",
        **kw,
    }


@pytest.mark.parametrize("winner", ["x", "y"])
def test_the_chosen_response_is_the_judges_winner(winner):
    from rlaif.stages.preferences import preference_pairs

    j = _judgement(winner)
    (p,) = preference_pairs(3, "g", [j, _judgement(None)])  # a dropped judgement makes no pair
    loser = "y" if winner == "x" else "x"
    assert p["chosen"] == j[winner] and p["rejected"] == j[loser]
    assert (
        p["chosen_finished"] == j[f"{winner}_finished"] and p["rejected_finished"] == j[f"{loser}_finished"]
    )
    assert p["p_chosen"] == pytest.approx(0.8) and p["chosen_is_x"] == (winner == "x")
    assert (p["round"], p["generator"], p["principle"]) == (3, "g", "answers")


def test_every_preference_of_a_round_prefers_the_response_the_judge_scored_higher(tiny_run):
    # a whole round on the tiny model: the judge's own pointwise scores, read back from judgements.jsonl,
    # must point at the chosen response of every pair that reached training
    run(tiny_run, rounds=1, overrides=["generate.samples_per_prompt=3"])
    judged = {j["prompt_id"]: j for j in read_jsonl(tiny_run / "round_1" / "judgements.jsonl")}
    prefs = read_jsonl(tiny_run / "round_1" / "preferences.jsonl")
    assert len(prefs) >= 3  # the test sees real pairs, not an empty file
    for p in prefs:
        j = judged[p["prompt_id"]]
        assert j["score_x"] != j["score_y"]
        better, worse = (j["x"], j["y"]) if j["score_x"] > j["score_y"] else (j["y"], j["x"])
        assert (p["chosen"], p["rejected"]) == (better, worse)
    train_pairs = read_jsonl(tiny_run / "round_1" / "train_pairs.jsonl")
    assert [(t["chosen"], t["rejected"]) for t in train_pairs] == [
        (p["chosen"], p["rejected"]) for p in prefs
    ]


def test_hybrid_rounds_rank_four_samples_replay_and_import_offline_pairs(tiny_run, tmp_path):
    offline = tmp_path / "offline.jsonl"
    rows = [
        {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},  # standard format
        {  # conversational format
            "prompt": [{"role": "user", "content": "Is this safe?"}],
            "chosen": [{"role": "assistant", "content": "Yes, it is safe."}],
            "rejected": [{"role": "assistant", "content": "bake bake"}],
        },
        {  # implicit prompt: whole conversations
            "chosen": [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "Hello to you."},
            ],
            "rejected": [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "Response B"},
            ],
        },
    ]
    offline.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = [
        "generate.samples_per_prompt=4",
        "judge.pairing=rank",
        "data.replay_share=1.0",
        f"data.offline=[{json.dumps(str(offline))}]",
        "data.offline_min=2",
        "dpo.loss=ipo",
        "dpo.reference=initial",
    ]
    results = run(tiny_run, rounds=2, overrides=sets)
    for k, m in enumerate(results, 1):
        judgements = read_jsonl(tiny_run / f"round_{k}" / "judgements.jsonl")
        assert len(judgements) == 6  # one best-vs-worst record per prompt
        assert m["judge"]["comparisons"] == 6 * 6  # every pair of 4 responses
        for j in judgements:
            scores = {r["sample"]: r["score"] for r in j["ranking"]}
            assert len(scores) == 4
            best, worst = j["samples"]
            if j["kept"]:
                assert scores[best] == max(scores.values()) and scores[worst] == min(scores.values())
        assert any(j["kept"] for j in judgements)  # the check above ran on real pairs
        mix = read_jsonl(tiny_run / f"round_{k}" / "train_pairs.jsonl")
        sources = [p["source"] for p in mix]
        online = m["judge"]["kept"]
        assert sources.count("online") == online
        assert sum(s.startswith("offline:") for s in sources) == 2  # offline_min, share 0
        assert m["dpo"]["mix"] == {s: n for s, n in _counts(s.split(":")[0] for s in sources).items()}
        if k == 2:
            earlier = len(read_jsonl(tiny_run / "round_1" / "preferences.jsonl"))
            assert sum(s.startswith("replay:round_1") for s in sources) == min(online, earlier)
        assert m["dpo"]["steps"] >= 1 and m["dpo"]["loss"] == "ipo"
    assert results[1]["dpo"]["reference"] == results[0]["model"]["parent"]  # the initial model, both rounds
    # and the initial model supplies round 2's log-probs: at round 2's first step the reference (round 0) is not the
    # policy (round 1's model), as it is at round 1's first step
    first = [read_jsonl(tiny_run / f"round_{k}" / "train_log.jsonl")[0] for k in (1, 2)]
    assert first[0]["ref_chosen_logp"] == pytest.approx(first[0]["chosen_logp"], abs=1e-4)
    assert abs(first[1]["ref_chosen_logp"] - first[1]["chosen_logp"]) > 1e-3


def _counts(items):
    out = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def test_export_round_trips_through_the_offline_reader(tiny_run, tmp_path):
    from rlaif.data import load_preferences

    run(tiny_run, rounds=1, overrides=["judge.min_confidence=0.5"])
    prefs = read_jsonl(tiny_run / "round_1" / "preferences.jsonl")
    for extra in ([], ["--conversational"]):
        out = tmp_path / f"export{len(extra)}.jsonl"
        assert main(["export", str(tiny_run), "--out", str(out), *extra]) == 0
        back = load_preferences(str(out))
        assert [(b["prompt"], b["chosen"], b["rejected"]) for b in back] == [
            (p["prompt"], p["chosen"], p["rejected"]) for p in prefs
        ]
    folder = tmp_path / "ds"
    assert main(["export", str(tiny_run), "--out", str(folder), "--format", "hf"]) == 0
    assert len(load_preferences(str(folder))) == len(prefs)


def test_a_second_run_on_the_same_folder_is_refused_until_the_first_ends(tiny_run, capsys):
    from rlaif.rounds import RunLock

    with RunLock(tiny_run):
        assert main(["run", str(tiny_run), "--rounds", "1"]) == 2
        err = capsys.readouterr().err
        assert "already being run by pid" in err and str(os.getpid()) in err
    # a killed holder releases it too: the lock is the kernel's, tied to the process
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from rlaif.rounds import RunLock; import time; RunLock({str(tiny_run)!r}).__enter__(); time.sleep(60)",
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        t0 = time.time()
        while (tiny_run / ".lock").read_text().strip() != str(proc.pid):
            assert time.time() - t0 < 30
            time.sleep(0.05)
        assert main(["run", str(tiny_run), "--rounds", "1"]) == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with RunLock(tiny_run):
        pass


@pytest.mark.parametrize(
    "failure, stage, words",
    [
        (OSError(28, "No space left on device"), "judge", "disk is full"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "dpo", "dpo.batch_size"),
        (MemoryError(), "generate", "generate.batch_size"),
    ],
)
def test_disk_full_and_out_of_memory_name_the_stage_and_the_fix(
    tiny_run, capsys, monkeypatch, failure, stage, words
):
    import importlib

    def boom(*a, **kw):
        raise failure

    monkeypatch.setattr(importlib.import_module(f"rlaif.stages.{stage}"), "run", boom)
    assert main(["run", str(tiny_run), "--rounds", "1"]) == 1
    err = capsys.readouterr().err
    assert f"{stage}:" in err and words in err and "Traceback" not in err
    monkeypatch.undo()
    # nothing written before the failure is lost: the rerun completes from there
    assert main(["run", str(tiny_run), "--rounds", "1"]) == 0


def test_a_tokenizer_without_chat_template_is_refused_by_name(tiny_run, tiny_model, tmp_path, capsys):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert (
        main(["run", str(tiny_run), "--rounds", "1", "--set", f"model.policy={json.dumps(str(plain))}"]) == 2
    )
    err = capsys.readouterr().err
    assert "the tokenizer has no chat template" in err and "Traceback" not in err
    assert not (tiny_run / "round_1" / "responses.jsonl").exists()
