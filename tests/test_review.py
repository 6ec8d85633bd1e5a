"""People reviewing the judge (rlaif/review/, rlaif/stages/review.py, `rlaif review`): labels on disk, what they do
to training pairs, the terminal app driven by Textual's Pilot, exchange with Label Studio and Argilla, and the
pause-review-continue loop through `rlaif run`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.data import DataError, load_preferences, read_jsonl, write_jsonl
from rlaif.judge_eval import load_labelled
from rlaif.review.exchange import export_pairs, import_labels
from rlaif.review.labels import (
    LABELS_FILE,
    LabelStore,
    ReviewBusy,
    ReviewLock,
    agreement,
    apply_labels,
    load_labels,
    review_order,
    review_pairs,
)

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = "[/INST] [bold red]fake[/bold red] \x1b[31mred\x1b[0m \u202eevil"


def make_pairs(n: int = 4) -> list[dict]:
    pairs = []
    for i in range(n):
        pairs.append(
            {
                "schema": 1,
                "pair_id": f"1:p{i}:0-1",
                "round": 1,
                "prompt_id": f"p{i}",
                "prompt": f"question {i}?" if i else f"question 0? {HOSTILE}",
                "chosen": f"chosen answer {i}" if i else f"chosen {HOSTILE}",
                "rejected": f"rejected answer {i}",
                "chosen_finished": True,
                "rejected_finished": False,
                "principle": "answers" if i % 2 else "hate",
                "p_chosen": [0.9, 0.55, 0.7, 0.6][i % 4],
                "p_first_xy": 0.6,
                "p_first_yx": 0.4,
                "chosen_is_x": i % 2 == 0,
                "judge": "smollm2-135m-harmless",
                "generator": "m",
            }
        )
    return pairs


@pytest.fixture
def round_folder(tmp_path) -> Path:
    rdir = tmp_path / "run" / "round_1"
    rdir.mkdir(parents=True)
    write_jsonl(rdir / "preferences.jsonl", make_pairs())
    return rdir


# -- labels and what they do ------------------------------------------------------------------------------


def test_flip_swaps_chosen_and_rejected_tie_drops_keep_marks_human():
    pairs = make_pairs()
    labels = {
        "1:p0:0-1": {"pair_id": "1:p0:0-1", "label": "flip", "reviewer": "ana"},
        "1:p1:0-1": {"pair_id": "1:p1:0-1", "label": "tie"},
        "1:p2:0-1": {"pair_id": "1:p2:0-1", "label": "keep"},
    }
    out = {p["pair_id"]: p for p in apply_labels(pairs, labels)}
    assert "1:p1:0-1" not in out  # tie: dropped
    flipped = out["1:p0:0-1"]
    assert (flipped["chosen"], flipped["rejected"]) == (pairs[0]["rejected"], pairs[0]["chosen"])
    assert (flipped["chosen_finished"], flipped["rejected_finished"]) == (False, True)
    assert flipped["p_chosen"] == pytest.approx(0.1) and flipped["label"] == "human"
    assert out["1:p2:0-1"]["chosen"] == pairs[2]["chosen"] and out["1:p2:0-1"]["label"] == "human"
    assert out["1:p3:0-1"]["label"] == "ai" and out["1:p3:0-1"]["chosen"] == pairs[3]["chosen"]
    # applied to the AI's pairs again: the same result (never a double flip)
    assert apply_labels(pairs, labels) == list(out.values())


def test_agreement_counts_keeps_against_flips_and_leaves_ties_out():
    labels = [{"label": x} for x in ("keep", "keep", "flip", "tie")]
    a = agreement(labels)
    assert (a["reviewed"], a["compared"], a["agree"], a["flips"], a["ties"]) == (4, 3, 2, 1, 1)
    assert a["agreement"] == pytest.approx(2 / 3)
    assert a["ci95"][0] < 2 / 3 < a["ci95"][1]


def test_uncertain_order_puts_the_judges_least_sure_verdicts_first():
    order = [p["p_chosen"] for p in review_order(make_pairs(), "uncertain")]
    assert order == sorted(order) == [0.55, 0.6, 0.7, 0.9]
    assert [p["pair_id"] for p in review_order(make_pairs(), "file")] == [p["pair_id"] for p in make_pairs()]
    with pytest.raises(DataError, match="--order"):
        review_order(make_pairs(), "sideways")


def test_disagreement_order_puts_the_judges_split_readings_first_and_random_is_seeded():
    pairs = make_pairs()
    # p_first_xy / p_first_yx: x's probability read x-first, and y's read y-first; agreeing readings sum to 1
    readings = [(0.6, 0.4), (0.9, 0.6), (0.5, 0.5), (0.8, 0.0)]
    for p, (a, b) in zip(pairs, readings, strict=True):
        p["p_first_xy"], p["p_first_yx"] = a, b
    del pairs[2]["p_first_yx"]  # one reading missing: no disagreement known
    got = [p["prompt_id"] for p in review_order(pairs, "disagreement")]
    assert got == [
        "p1",
        "p3",
        "p2",
        "p0",
    ]  # |0.9 - 0.4| = 0.5, |0.8 - 1| = 0.2, then 0 (by p_chosen: 0.7, 0.9)
    shuffled = [p["pair_id"] for p in review_order(make_pairs(12), "random", seed=3)]
    assert shuffled == [p["pair_id"] for p in review_order(make_pairs(12), "random", seed=3)]
    assert shuffled != [p["pair_id"] for p in review_order(make_pairs(12), "random", seed=4)]
    assert sorted(shuffled) == sorted(p["pair_id"] for p in make_pairs(12))


def test_store_writes_each_label_at_once_last_label_wins_and_undo_restores(round_folder):
    pairs = review_pairs(round_folder)
    store = LabelStore(round_folder, "ana")
    store.set(pairs[0], "keep")
    assert [r["label"] for r in read_jsonl(round_folder / LABELS_FILE)] == ["keep"]
    store.set(pairs[0], "flip")
    store.set(pairs[1], "tie")
    on_disk = load_labels(round_folder)
    assert {k: r["label"] for k, r in on_disk.items()} == {"1:p0:0-1": "flip", "1:p1:0-1": "tie"}
    assert on_disk["1:p0:0-1"]["chosen"] == pairs[0]["rejected"]  # the record is the reviewer's pair
    assert on_disk["1:p0:0-1"]["reviewer"] == "ana" and on_disk["1:p0:0-1"]["agree"] is False
    assert store.undo() == "1:p1:0-1" and store.undo() == "1:p0:0-1"
    assert {k: r["label"] for k, r in load_labels(round_folder).items()} == {"1:p0:0-1": "keep"}


def test_a_bad_labels_file_is_named_with_its_line(round_folder):
    (round_folder / LABELS_FILE).write_text(
        '{"pair_id": "1:p0:0-1", "label": "keep"}\n{"pair_id": "x", "label": "maybe"}\n'
    )
    with pytest.raises(DataError, match=r"human_labels.jsonl:2: .*keep, flip, tie"):
        load_labels(round_folder)


def test_a_second_reviewer_of_the_same_round_is_refused(round_folder):
    with ReviewLock(round_folder):
        with pytest.raises(ReviewBusy, match=r"already being reviewed \(pid \d+\)"):
            with ReviewLock(round_folder):
                pass
    with ReviewLock(round_folder):  # released when the first one quits
        pass


def test_labels_file_reads_as_preference_pairs_for_rm_train_and_judge_eval(round_folder):
    pairs = review_pairs(round_folder)
    store = LabelStore(round_folder, "ana")
    store.set(pairs[0], "flip")
    store.set(pairs[1], "tie")
    store.set(pairs[2], "keep")
    path = round_folder / LABELS_FILE
    loaded = load_preferences(str(path))
    assert [(p["chosen"], p["rejected"]) for p in loaded] == [
        (pairs[0]["rejected"], pairs[0]["chosen"]),
        (pairs[2]["chosen"], pairs[2]["rejected"]),
    ]  # the tie is no pair
    assert [p["chosen"] for p in load_labelled(path)] == [pairs[0]["rejected"], pairs[2]["chosen"]]


# -- the terminal app ------------------------------------------------------------------------------------


def run_app(rdir: Path, keys: list[str], size=(100, 30), order="uncertain"):
    from rlaif.review.app import ReviewApp

    async def go():
        store = LabelStore(rdir, "tester")
        app = ReviewApp(review_order(review_pairs(rdir), order), store, title="test")
        async with app.run_test(size=size) as pilot:
            for k in keys:
                await pilot.press(k)
            await pilot.pause()
            app.shown = {
                w: str(app.query_one(w).render())
                for w in ("#meta", "#prompt", "#x", "#y", "#judge", "#status")
            }
            app.shown["screen"] = type(app.screen).__name__
            return app, app.export_screenshot()

    return asyncio.run(go())


def labels_of(rdir: Path) -> dict[str, str]:
    return {r["pair_id"]: r["label"] for r in read_jsonl(rdir / LABELS_FILE)}


def test_keys_in_exact_labels_out(round_folder):
    # uncertain order: p1 (0.55), p3 (0.60), p2 (0.70), p0 (0.90); the tie on p0 is undone (the view stays
    # there), then "p" goes back to p2, which gets the tie
    app, _ = run_app(round_folder, ["k", "f", "s", "t", "u", "p", "t"])
    assert labels_of(round_folder) == {"1:p1:0-1": "keep", "1:p3:0-1": "flip", "1:p2:0-1": "tie"}
    records = {r["pair_id"]: r for r in read_jsonl(round_folder / LABELS_FILE)}
    assert (
        records["1:p3:0-1"]["chosen"] == "rejected answer 3" and records["1:p3:0-1"]["reviewer"] == "tester"
    )
    assert records["1:p1:0-1"]["agree"] is True and records["1:p3:0-1"]["agree"] is False


def test_principle_filter_and_search_narrow_the_pairs(round_folder):
    app, _ = run_app(round_folder, ["c", *"hate", "enter", "k", "k"])
    assert labels_of(round_folder) == {"1:p2:0-1": "keep", "1:p0:0-1": "keep"}  # only the two "hate" pairs
    app, _ = run_app(round_folder, ["escape", "slash", *"answer 3", "enter", "f"])
    assert labels_of(round_folder)["1:p3:0-1"] == "flip"


def test_untrusted_text_is_shown_literally_in_the_app(round_folder):
    app, shot = run_app(round_folder, [], order="file")  # the first pair carries markup and escape codes
    for widget in ("#prompt", "#x"):
        shown = app.shown[widget]
        assert "[/INST] [bold red]fake[/bold red]" in shown  # markup stays text
        assert "\\x1b[31mred\\x1b[0m \\u202eevil" in shown  # controls as visible escapes
    assert "\x1b" not in shot and "\u202e" not in shot  # nothing reaches the terminal raw


def test_footer_counts_reviewed_pairs_and_the_judges_agreement(round_folder):
    app, _ = run_app(round_folder, ["k", "f", "k"])
    assert "reviewed 3/4" in app.shown["#status"] and "judge agrees with you 2/3 (67%" in app.shown["#status"]


def test_the_judge_line_shows_rewards_scores_or_both_readings_by_mode(round_folder):
    pairs = make_pairs()
    pairs[0].update(
        mode="reward", score_x=0.9, score_y=0.2
    )  # a reward head's P = sigmoid(r(x) - r(y)) scores
    pairs[1].update(mode="pointwise", score_x=0.75, score_y=0.5)
    write_jsonl(round_folder / "preferences.jsonl", pairs)
    app, _ = run_app(round_folder, [], order="file")
    judge = app.shown["#judge"]
    assert "reward r(x) = +2.20, r(y) = -1.39" in judge and "P(Yes" not in judge  # logits of 0.9 and 0.2
    app, _ = run_app(round_folder, ["s"], order="file")
    assert "P(Yes | x) = 0.75, P(Yes | y) = 0.50" in app.shown["#judge"]
    app, _ = run_app(round_folder, ["s", "s"], order="file")  # the logprob judge: both orders' readings
    assert "x first: 0.60, y first: 0.40 (P(first better))" in app.shown["#judge"]


def test_an_empty_search_an_unknown_principle_undo_and_help_say_so(round_folder):
    app, _ = run_app(round_folder, ["slash", *"no such text", "enter"])
    assert "no pair matches the search or filter" in app.shown["#meta"] and app.shown["#x"] == ""
    app, _ = run_app(round_folder, ["escape", "u"])  # esc clears the search; nothing labelled yet
    assert "nothing to undo" in app.shown["#status"] and "question" in app.shown["#prompt"]
    app, _ = run_app(round_folder, ["c", *"ghost", "enter"])
    assert "no principle 'ghost'" in app.shown["#status"] and app.principle == ""  # the filter is unchanged
    app, _ = run_app(round_folder, ["c", *"ghost", "enter", "k"])
    assert len(labels_of(round_folder)) == 1  # the keys after it label pairs again
    app, _ = run_app(round_folder, ["question_mark"])
    assert app.shown["screen"] == "HelpScreen"
    app, _ = run_app(round_folder, ["question_mark", "escape", "k"])
    assert app.shown["screen"] != "HelpScreen" and len(labels_of(round_folder)) == 2


def test_snapshot_of_one_screen(round_folder, snap_compare):
    from rlaif.review.app import ReviewApp

    store = LabelStore(round_folder, "tester")
    app = ReviewApp(review_order(review_pairs(round_folder), "file"), store, title="runs/demo · round 1")
    assert snap_compare(app, terminal_size=(100, 30), press=["k"])


KILL_MID_REVIEW = """
import asyncio, os, signal, sys
from pathlib import Path
from rlaif.review.app import ReviewApp
from rlaif.review.labels import LabelStore, review_order, review_pairs
rdir = Path(sys.argv[1])
async def go():
    app = ReviewApp(review_order(review_pairs(rdir), "uncertain"), LabelStore(rdir, "tester"))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("k", "f")
        await pilot.pause()
        os.kill(os.getpid(), signal.SIGKILL)
asyncio.run(go())
"""


def test_kill_mid_review_then_resume_where_it_stopped(round_folder):
    proc = subprocess.run(
        [sys.executable, "-c", KILL_MID_REVIEW, str(round_folder)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL
    assert labels_of(round_folder) == {"1:p1:0-1": "keep", "1:p3:0-1": "flip"}  # both labels survived
    app, _ = run_app(round_folder, [])
    assert app.pair["pair_id"] == "1:p2:0-1"  # resumes at the first pair not labelled yet
    run_app(round_folder, ["t"])
    assert labels_of(round_folder) == {"1:p1:0-1": "keep", "1:p3:0-1": "flip", "1:p2:0-1": "tie"}


def test_review_without_a_terminal_points_to_export(round_folder, capsys):
    run = round_folder.parent
    (run / "config.toml").write_text("")
    assert main(["review", str(run)]) == 2  # pytest's stdin is not a terminal
    err = capsys.readouterr().err
    assert "interactive terminal" in err and "--export" in err and "Traceback" not in err


# -- exchange with labelling tools -------------------------------------------------------------------------


def test_label_studio_round_trip(round_folder, tmp_path):
    pairs = review_pairs(round_folder)
    out = tmp_path / "ls.json"
    assert export_pairs(pairs, {}, out, "label-studio") == 4
    tasks = json.loads(out.read_text())
    assert (tmp_path / "ls.xml").read_text().count("<Pairwise") == 1
    t0 = tasks[0]  # p0: the AI chose x (chosen_is_x), shown as text1 = left
    assert t0["data"]["text1"] == pairs[0]["chosen"] and t0["data"]["text2"] == pairs[0]["rejected"]
    assert t0["predictions"][0]["result"][0]["value"] == {"selected": "left"}
    assert tasks[1]["predictions"][0]["result"][0]["value"] == {"selected": "right"}  # p1: AI chose y
    # what Label Studio's JSON export gives back: annotations with the Pairwise tag's result
    tasks[0]["annotations"] = [
        {
            "completed_by": {"email": "ana@example.org"},
            "was_cancelled": False,
            "result": [
                {"from_name": "pw", "to_name": "text1", "type": "pairwise", "value": {"selected": "right"}}
            ],
        }
    ]
    tasks[1]["annotations"] = [
        {
            "completed_by": 7,
            "result": [
                {"from_name": "pw", "to_name": "text1", "type": "pairwise", "value": {"selected": "right"}}
            ],
        }
    ]
    tasks[2]["annotations"] = [
        {
            "result": [
                {"from_name": "tie", "to_name": "text1", "type": "choices", "value": {"choices": ["tie"]}}
            ]
        }
    ]
    tasks[3]["annotations"] = [{"was_cancelled": True, "result": []}]
    back = tmp_path / "ls-export.json"
    back.write_text(json.dumps(tasks))
    records = import_labels(back, "label-studio", pairs, "me")
    assert {r["pair_id"]: r["label"] for r in records} == {
        "1:p0:0-1": "flip",
        "1:p1:0-1": "keep",
        "1:p2:0-1": "tie",
    }
    assert records[0]["reviewer"] == "label-studio:ana@example.org"


def test_argilla_and_jsonl_round_trips(round_folder, tmp_path):
    pairs = review_pairs(round_folder)
    out = tmp_path / "ar.json"
    export_pairs(pairs, {}, out, "argilla")
    doc = json.loads(out.read_text())
    recs = doc["records"]
    assert recs[0]["suggestions"]["preference"]["value"] == "response1"
    assert recs[1]["suggestions"]["preference"] == {
        "value": "response2",
        "score": 0.55,
        "agent": "smollm2-135m-harmless",
    }
    recs[0]["responses"] = {"preference": [{"value": "response1", "user_id": "u1", "status": "submitted"}]}
    recs[1]["responses"] = {"preference": [{"value": "response1", "user_id": "u2", "status": "submitted"}]}
    recs[2]["responses"] = {"preference": [{"value": "tie", "status": "draft"}]}  # a draft is not a label
    out.write_text(json.dumps(doc))
    got = {r["pair_id"]: r["label"] for r in import_labels(out, "argilla", pairs, "me")}
    assert got == {"1:p0:0-1": "keep", "1:p1:0-1": "flip"}

    jl = tmp_path / "pairs.jsonl"
    export_pairs(pairs, {}, jl, "jsonl")
    rows = read_jsonl(jl)
    rows[3]["label"] = "flip"
    write_jsonl(jl, rows)
    assert [(r["pair_id"], r["label"]) for r in import_labels(jl, "jsonl", pairs, "me")] == [
        ("1:p3:0-1", "flip")
    ]
    rows[2]["pair_id"] = "9:nope"
    rows[2]["label"] = "keep"
    write_jsonl(jl, rows)
    with pytest.raises(DataError, match=r"pairs.jsonl:3: pair '9:nope' is not a judged pair"):
        import_labels(jl, "jsonl", pairs, "me")


PAIRWISE = {"type": "pairwise", "value": {"selected": "up"}}
BAD_IMPORTS = [
    ("label-studio", {"tasks": []}, "a Label Studio export is a JSON list of tasks"),
    ("label-studio", [{"id": 1}], 'task 1: expected an object with "data"'),
    ("label-studio", [{"data": {"text1": "a"}}], 'task 1: "data.pair_id" is missing'),
    (
        "label-studio",
        [
            {"data": {"pair_id": "1:p0:0-1"}},
            {"data": {"pair_id": "1:p1:0-1"}, "annotations": [{"result": [PAIRWISE]}]},
        ],
        'task 2: pairwise "selected" must be "left" or "right", got \'up\'',
    ),
    (
        "label-studio",
        [
            {
                "data": {"pair_id": "7:x"},
                "annotations": [{"result": [{**PAIRWISE, "value": {"selected": "left"}}]}],
            }
        ],
        "task 1: pair '7:x' is not a judged pair of this round",
    ),
    ("argilla", {"items": []}, "an Argilla export is a list of records"),
    ("argilla", ["r"], "record 1: expected an object"),
    ("argilla", [{"fields": {}}], "record 1: no pair_id"),
    (
        "argilla",
        [{"metadata": {"pair_id": "1:p0:0-1"}, "responses": {"preference": [{"value": "both"}]}}],
        "record 1: preference must be response1, response2 or tie, got 'both'",
    ),
    ("jsonl", [{"label": "keep"}], ':1: "pair_id" is missing'),
    ("jsonl", [{"pair_id": "1:p0:0-1", "label": "maybe"}], ':1: "label" must be one of'),
]


@pytest.mark.parametrize("fmt, content, message", BAD_IMPORTS)
def test_a_bad_import_names_the_task_record_or_line(round_folder, tmp_path, fmt, content, message):
    pairs = review_pairs(round_folder)
    f = tmp_path / ("labels.jsonl" if fmt == "jsonl" else "labels.json")
    if fmt == "jsonl":
        write_jsonl(f, content)
    else:
        f.write_text(json.dumps(content))
    with pytest.raises(DataError) as e:
        import_labels(f, fmt, pairs, "me")
    assert str(e.value).startswith(str(f)) and message in str(e.value)


def test_an_import_that_is_not_json_or_not_there_is_named(round_folder, tmp_path):
    pairs = review_pairs(round_folder)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(DataError, match=r"x.json: not a JSON file"):
        import_labels(tmp_path / "x.json", "argilla", pairs, "me")
    with pytest.raises(DataError, match=r"gone.json: file not found"):
        import_labels(tmp_path / "gone.json", "label-studio", pairs, "me")
    with pytest.raises(DataError, match=r"--format must be one of .*got 'csv'"):
        import_labels(tmp_path / "x.json", "csv", pairs, "me")
    assert not (round_folder / LABELS_FILE).exists()


def test_cli_export_then_import_writes_the_labels_file(round_folder, tmp_path, capsys):
    run = round_folder.parent
    (run / "config.toml").write_text("")
    out = tmp_path / "r1.jsonl"
    assert main(["review", str(run), "--export", str(out), "--format", "jsonl"]) == 0
    rows = read_jsonl(out)
    for r in rows:
        r["label"] = "keep"
    write_jsonl(out, rows)
    assert main(["review", str(run), "--round", "1", "--import", str(out), "--format", "jsonl"]) == 0
    assert set(labels_of(round_folder).values()) == {"keep"} and len(labels_of(round_folder)) == 4
    assert main(["review", str(run), "--round", "3"]) == 2
    assert "round 3 has no judged pairs" in capsys.readouterr().err
    assert main(["review", str(run), "--export", str(tmp_path / "x.json")]) == 2
    assert (
        "--export and --import need --format" in capsys.readouterr().err
        and not (tmp_path / "x.json").exists()
    )
    assert (
        main(
            [
                "review",
                str(run),
                "--limit",
                "2",
                "--export",
                str(tmp_path / "ls.json"),
                "--format",
                "label-studio",
            ]
        )
        == 0
    )
    shown = capsys.readouterr().out
    assert "exported 2 pairs of round 1" in shown and "labelling config" in shown and "ls.xml" in shown
    assert len(json.loads((tmp_path / "ls.json").read_text())) == 2 and (tmp_path / "ls.xml").is_file()
    empty = tmp_path / "fresh"
    empty.mkdir()
    (empty / "config.toml").write_text("")
    assert main(["review", str(empty)]) == 2
    assert "no round has judged pairs yet" in capsys.readouterr().err


def test_cli_principle_filter_by_id_or_kind_and_an_unknown_one_is_named(round_folder, tmp_path, capsys):
    run = round_folder.parent
    (run / "config.toml").write_text("")
    rows = make_pairs()
    for r in rows:
        r["kinds"] = ["harmlessness" if r["principle"] == "hate" else "helpfulness"]
    write_jsonl(round_folder / "preferences.jsonl", rows)
    out = tmp_path / "r1.jsonl"
    for principle in ("hate", "harmlessness"):
        assert (
            main(["review", str(run), "--principle", principle, "--export", str(out), "--format", "jsonl"])
            == 0
        )
        assert sorted(r["pair_id"] for r in read_jsonl(out)) == ["1:p0:0-1", "1:p2:0-1"]
    assert main(["review", str(run), "--principle", "hat", "--export", str(out), "--format", "jsonl"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "--principle 'hat': no pair of round 1 has it (principles: answers, hate; kinds: harmlessness, helpfulness)"
        in err
    )


# -- the pause-review-continue loop ---------------------------------------------------------------------------


def test_pause_review_continue_trains_on_the_corrected_pairs(tiny_run, capsys):
    assert main(["run", str(tiny_run), "--rounds", "1", "--set", "round.review=pause"]) == 0
    out = capsys.readouterr().out
    assert "paused for review" in out and f"rlaif review {tiny_run}" in out
    rdir = tiny_run / "round_1"
    assert not (rdir / "adapter").exists() and not (rdir / "metrics.json").exists()  # stopped before training
    pairs = review_pairs(rdir)
    assert len(pairs) >= 3
    store = LabelStore(rdir, "ana")
    store.set(pairs[0], "flip")
    store.set(pairs[1], "tie")
    store.set(pairs[2], "keep")

    assert main(["run", str(tiny_run), "--rounds", "1", "--set", "round.review=pause"]) == 0
    assert (rdir / "metrics.json").is_file()
    train = {p["pair_id"]: p for p in read_jsonl(rdir / "train_pairs.jsonl")}
    assert pairs[1]["pair_id"] not in train  # the tie is dropped
    flipped = train[pairs[0]["pair_id"]]
    assert (flipped["chosen"], flipped["rejected"]) == (pairs[0]["rejected"], pairs[0]["chosen"])
    assert flipped["label"] == "human" and train[pairs[2]["pair_id"]]["label"] == "human"
    assert all(
        p["label"] == "ai"
        for pid, p in train.items()
        if pid not in {pairs[0]["pair_id"], pairs[2]["pair_id"]}
    )
    assert len(train) == len(pairs) - 1
    stages = json.loads((rdir / "stages.json").read_text())
    assert (
        stages["review"]["flipped"] == 1
        and stages["review"]["tied"] == 1
        and stages["review"]["agreement"] == 0.5
    )
    assert stages["dpo"]["steps"] > 0

    # the report shows the judge's agreement with the reviewer
    assert main(["report", str(tiny_run)]) == 0
    report = capsys.readouterr().out
    assert "the judge against people's labels" in report and "50%" in report

    # round 2: round 1's reviewed pairs join its training set as human labels
    assert main(["run", str(tiny_run), "--rounds", "2"]) == 0
    train2 = read_jsonl(tiny_run / "round_2" / "train_pairs.jsonl")
    human = [p for p in train2 if p["source"] == "human:round_1"]
    assert sorted(p["pair_id"] for p in human) == sorted([pairs[0]["pair_id"], pairs[2]["pair_id"]])
    assert next(p for p in human if p["pair_id"] == pairs[0]["pair_id"])["chosen"] == pairs[0]["rejected"]
