"""Untrusted text reaches the terminal literally (rlaif/untrusted.py): a run folder whose every text field
carries rich markup, escape sequences and NULs is shown by every verb that prints, into a captured terminal,
with exit 0, the text visible as written, and none of the planted sequences in the output."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaif import cli
from rlaif.untrusted import console, literal, recover, visible

# markup rich would act on, an unmatched closing tag (crashed `rlaif report`), a hyperlink, a screen clear,
# an OSC 8 hyperlink, BEL, NUL, an 8-bit CSI, a bidi override and an emoji code
PLANT = (
    "[/INST] [link=http://evil.example]click[/link] [bold]B[/bold] \x1b[2Jclear "
    "\x1b]8;;http://evil.example\x1b\\osc\x1b]8;;\x1b\\ bel\x07 nul\x00 csi\x9b2J rlo\u202eoff :warning:"
)
SHOWN = [  # how the plant reads on the terminal: markup as typed, controls as escapes
    "[/INST] [link=http://evil.example]click[/link] [bold]B[/bold]",
    "\\x1b[2Jclear",
    "\\x1b]8;;http://evil.example\\x1b\\osc",
    "bel\\x07 nul\\0 csi\\x9b2J rlo\\u202eoff :warning:",
]
# what rich itself writes to a terminal: SGR styling, and the cursor codes of its progress bars
RICH_OWN = re.compile(r"\x1b\[(?:[0-9;]*[mKAG]|\?25[lh]|2K)|\r")


def terminal():
    return console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=600)


def _planted_sequences(out: str) -> list[str]:
    """Escape and control characters in a terminal's output that rich did not write itself."""
    rest = RICH_OWN.sub("", out)
    return [c for c in rest if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F or c == "\u202e"]


def _flat(text: str) -> str:
    """Output as a reader follows it: rich's own codes, line breaks of wrapped cells and spacing removed."""
    return re.sub(r"[\s│|]+", "", RICH_OWN.sub("", text))


def _shows(out: str, piece: str) -> bool:
    return _flat(piece) in _flat(out)


def _assert_literal(out: str, where: str) -> None:
    assert not _planted_sequences(out), f"{where}: {sorted(set(_planted_sequences(out)))!r}"
    assert "http://evil.example" not in RICH_OWN.sub("", out).replace(
        "[link=http://evil.example]", ""
    ).replace("8;;http://evil.example", ""), (
        where
    )  # the address is only ever shown as typed, never made a link
    for piece in SHOWN:
        assert _shows(out, piece), f"{where}: {piece!r} not shown"


# -- the renderer -----------------------------------------------------------------------------------------


def test_visible_keeps_text_and_shows_controls():
    assert visible("[bold]x[/] \\ C:\\path ok\n\ttab") == "[bold]x[/] \\ C:\\path ok\n\ttab"
    assert visible("a\x1b[31mb\x00c\rd\x9b\ud800") == "a\\x1b[31mb\\0c\\rd\\x9b\\ud800"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=())))
def test_any_string_round_trips_as_visible_text(s):
    text = literal(s)
    assert recover(text) == s
    term = terminal()
    term.print(text, soft_wrap=True)
    out = term.file.getvalue()
    assert not _planted_sequences(out)
    # the same characters, tabs aside (rich expands them by cell width)
    spaces = re.compile(r"[ \t]+")
    assert spaces.sub(" ", RICH_OWN.sub("", out)) == spaces.sub(" ", visible(s) + "\n")


def test_markup_and_emoji_in_a_plain_string_stay_text():
    term = terminal()
    term.print("[bold red]x[/] [/INST] :warning:")
    assert RICH_OWN.sub("", term.file.getvalue()) == "[bold red]x[/] [/INST] :warning:\n"


# -- every verb, on a poisoned run --------------------------------------------------------------------------


def _write(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def poisoned(tmp_path, tiny_model):
    """A run folder named with markup and an escape, round 1 complete, every text field planted."""
    run = tmp_path / "[exp1] \x1b[2J"
    r1 = run / "round_1"
    (run / "config.toml").parent.mkdir(parents=True)
    (run / "config.toml").write_text(
        f'seed = 1\n[model]\npolicy = {json.dumps(tiny_model)}\n[data]\nprompts = "prompts.jsonl"\n'
    )
    _write(run / "prompts.jsonl", [{"prompt": PLANT, "id": "p0"}, {"prompt": "plain " + PLANT, "id": "p1"}])
    base = {
        "consistent": True,
        "consistent_calibrated": True,
        "option_mass": 1.0,
        "round": 1,
        "samples": [0, 1],
    }
    _write(
        r1 / "judgements.jsonl",
        [
            {
                **base,
                "prompt_id": PLANT,
                "prompt": PLANT,
                "x": PLANT,
                "y": "y " + PLANT,
                "principle": "harm " + PLANT,
                "mode": "rationale",
                "p_first_xy": 0.8,
                "p_first_yx": 0.3,
                "bias": 0.0,
                "p_x": 0.75,
                "winner": "x",
                "reason": None,
                "kept": True,
                "rationale_xy": [PLANT],
                "rationale_yx": [PLANT],
                "ranking": [{"sample": 0, "score": 1.0}, {"sample": 1, "score": -1.0}],
            },
            {
                **base,
                "prompt_id": "p1",
                "prompt": PLANT,
                "x": PLANT,
                "y": PLANT,
                "principle": PLANT,
                "mode": "pointwise",
                "score_x": 0.5,
                "score_y": 0.5,
                "p_first_xy": 0.5,
                "p_first_yx": 0.5,
                "bias": 0.0,
                "p_x": 0.5,
                "winner": None,
                "reason": "uncertain " + PLANT,
                "kept": False,
            },
        ],
    )
    _write(
        r1 / "preferences.jsonl",
        [{"prompt": PLANT, "chosen": PLANT, "rejected": "no " + PLANT, "principle": PLANT, "round": 1}],
    )
    _write(
        r1 / "revisions.jsonl",
        [
            {
                "round": 1,
                "prompt_id": PLANT,
                "prompt": PLANT,
                "initial": PLANT,
                "passes": [
                    {
                        "pass": 1,
                        "principle": PLANT,
                        "critique": PLANT,
                        "revision": PLANT,
                        "kept": True,
                        "dropped": None,
                    },
                    {
                        "pass": 2,
                        "principle": "x",
                        "critique": "c",
                        "revision": "r",
                        "kept": False,
                        "dropped": PLANT,
                    },
                ],
                "final": PLANT,
            }
        ],
    )
    metrics = {
        "round": 1,
        "generate": {"responses": 4, "mean_tokens": 3.0},
        "judge": {
            "pairs": 2,
            "kept": 1,
            "mode": "rationale",
            "position_consistency": 1.0,
            "position_consistency_calibrated": 1.0,
        },  # fmt: skip
        "train": {"steps": 1, "loss_first": 0.69, "loss_last": 0.6, "reward_accuracy": 1.0},
        "critique": {"prompts": 1, "kept": 1, "revisions": 2, "dropped": {"empty": 0}},
        "sft": {"examples": 1, "steps": 1, "loss_first": 1.0, "loss_last": 0.9, "token_accuracy": 0.5},
        "rl": {"algorithm": PLANT, "reward_mean": 0.1, "mean_tokens": 3, "kl_first": 0, "kl_last": 0.1},
        "model": {"path": tiny_model + "/" + PLANT, "parent": PLANT},
        "time": {"generate": 1, "judge": 1, "train": 1},
    }
    (r1 / "metrics.json").write_text(json.dumps(metrics))
    row = {"round": 0, "label": PLANT, "model": PLANT, "win_vs_round0": None, "harmless_rate": 0.5,
           "refusal_rate_harmful": 0.1, "over_refusal_benign": 0.0, "mean_tokens": 3, "kl_from_round0": 0.0}  # fmt: skip
    (run / "eval.json").write_text(
        json.dumps({"run": PLANT, "judge_mode": PLANT, "rows": [row, {**row, "round": 1}]})
    )
    (run / "manifest.json").write_text(json.dumps({"config": {"train": {"loss": "sigmoid", "beta": 0.1}}}))
    return run


def _run_verb(monkeypatch, capsys, *argv) -> tuple[int, str]:
    out, err = terminal(), terminal()
    import importlib
    import pkgutil

    # every verb module prints through the consoles it imported from rlaif.cli.common: capture them all
    names = [i.name for i in pkgutil.iter_modules(cli.__path__) if i.name != "__main__"]
    for m in [cli] + [importlib.import_module(f"rlaif.cli.{name}") for name in names]:
        for name, stream in (("console", out), ("err", err)):
            if hasattr(m, name):
                monkeypatch.setattr(m, name, stream)
    code = cli.main([str(a) for a in argv])
    printed = capsys.readouterr()
    return code, out.file.getvalue() + err.file.getvalue() + printed.out + printed.err


@pytest.mark.parametrize(
    "verb",
    [
        ["report", "{run}", "--examples", "3"],
        ["pairs", "{run}"],
        ["revisions", "{run}"],
        ["export", "{run}", "--out", "{tmp}/[out] \x1b[2J.jsonl"],
    ],
    ids=lambda v: v[0],
)
def test_every_run_verb_shows_planted_text_literally(poisoned, tmp_path, monkeypatch, capsys, verb):
    argv = [a.replace("{run}", str(poisoned)).replace("{tmp}", str(tmp_path)) for a in verb]
    code, out = _run_verb(monkeypatch, capsys, *argv)
    assert code == 0, out
    assert not _planted_sequences(out), sorted(set(_planted_sequences(out)))
    if verb[0] == "export":
        assert _shows(out, "[out] \\x1b[2J.jsonl")
        assert json.loads((tmp_path / "[out] \x1b[2J.jsonl").read_text())["chosen"] == PLANT
        return
    if verb[0] == "report":
        assert _shows(out, "[exp1] \\x1b[2J")  # the run folder keeps its name
    _assert_literal(out, verb[0])
    assert "\x1b[1m" in out  # rich's own styling stays


def test_json_output_carries_no_raw_controls(poisoned, monkeypatch, capsys):
    code, out = _run_verb(monkeypatch, capsys, "pairs", poisoned, "--json")
    assert code == 0
    assert not _planted_sequences(out)
    assert json.loads(out.splitlines()[0])["x"] == PLANT


def test_principles_and_their_problems_are_shown_literally(tmp_path, monkeypatch, capsys):
    pdir = tmp_path / "principles"
    pdir.mkdir()
    (pdir / "odd.toml").write_text(
        "\n".join(
            f"{k} = {json.dumps(v)}"
            for k, v in dict(
                id="odd",
                kind="helpfulness",
                title=PLANT,
                question=PLANT,
                check=PLANT,
                critique=PLANT,
                revision=PLANT,
            ).items()
        )
    )
    const = tmp_path / "c.toml"
    const.write_text(
        f'name = {json.dumps(PLANT)}\ntemplate = "{Path(cli.__file__).parent.parent.parent}/constitution/templates/pairwise.toml"\n'
        f'principles_dir = "{pdir}"\n[principles]\nodd = 1\n'
    )
    code, out = _run_verb(monkeypatch, capsys, "principles", "--constitution", const)
    assert code == 0, out
    _assert_literal(out, "principles")
    bad = pdir / "bad.toml"
    bad.write_text(f'id = "bad"\n{json.dumps(PLANT)} = 1\n')
    code, out = _run_verb(monkeypatch, capsys, "principles", "check", bad)
    assert code == 2
    assert not _planted_sequences(out) and "[/INST]" in out and _shows(out, "\\x1b[2Jclear")


def test_an_error_naming_a_planted_path_is_shown_literally(tmp_path, monkeypatch, capsys):
    code, out = _run_verb(monkeypatch, capsys, "report", tmp_path / PLANT.replace("/", "|"))
    assert code == 2
    assert "no such run folder" in out and not _planted_sequences(out)
    assert _shows(out, "[link=http:||evil.example]click[|link]") and _shows(out, "\\x1b[2Jclear")


def test_verbs_that_sample_show_prompts_literally(poisoned, tmp_path, monkeypatch, capsys):
    """sample, compare and eval on the tiny model: the planted prompts are shown (sample, compare) and the
    run's planted name is in every title."""
    prompts = poisoned / "prompts.jsonl"
    code, out = _run_verb(
        monkeypatch, capsys, "sample", "--run", poisoned, "--round", "0", "--prompts", prompts,
        "--max-new-tokens", "4", "--out", tmp_path / "s.jsonl",
    )  # fmt: skip
    assert code == 0, out
    _assert_literal(out, "sample")
    code, out = _run_verb(
        monkeypatch, capsys, "compare", f"{poisoned}:0", f"{poisoned}:0", "--prompts", prompts,
        "--max-new-tokens", "4",
    )  # fmt: skip
    assert code == 0, out
    _assert_literal(out, "compare")
    assert _shows(out, "[exp1] \\x1b[2J")
    (poisoned / "round_1" / "metrics.json").unlink()  # round 0 only: the run's own models are not needed
    code, out = _run_verb(
        monkeypatch, capsys, "eval", poisoned, "--rounds", "0", "--harmful", prompts, "--benign", prompts,
        "--limit", "1", "--max-new-tokens", "4",
    )  # fmt: skip
    assert code == 0, out
    assert not _planted_sequences(out) and _shows(out, "[exp1] \\x1b[2J")


def test_judge_and_reward_verbs_show_data_paths_literally(tmp_path, tiny_model, monkeypatch, capsys):
    data = tmp_path / "[d] \x1b[2J.jsonl"
    _write(
        data,
        [{"prompt": f"q{i} {PLANT}", "chosen": f"yes {i}", "rejected": f"no {i} {PLANT}"} for i in range(4)],
    )
    code, out = _run_verb(
        monkeypatch,
        capsys,
        "judge-eval",
        "--data",
        data,
        "--judge-model",
        tiny_model,
        "--out",
        tmp_path / "j.json",
    )
    assert code == 0, out
    assert not _planted_sequences(out) and _shows(out, "[d] \\x1b[2J.jsonl")
    head = tmp_path / "[head] \x1b[2J"
    code, out = _run_verb(
        monkeypatch, capsys, "rm", "train", "--pairs", data, "--model", tiny_model, "--out", head
    )
    assert code == 0, out
    assert not _planted_sequences(out) and _shows(out, "[head] \\x1b[2J")
    code, out = _run_verb(
        monkeypatch, capsys, "rm", "eval", "--data", data, "--model", head, "--out", tmp_path / "r.json"
    )
    assert code == 0, out
    assert not _planted_sequences(out) and _shows(out, "[d] \\x1b[2J.jsonl")


def test_a_run_reports_its_planted_prompts_at_the_end(tiny_run, monkeypatch, capsys):
    """`rlaif run` prints the report after its rounds: a model writing `[/INST]` crashed it there."""
    _write(tiny_run / "prompts.jsonl", [{"prompt": f"{i} {PLANT}"} for i in range(4)])
    code, out = _run_verb(monkeypatch, capsys, "run", tiny_run, "--rounds", "1", "--set", "dpo.epochs=1")
    assert code == 0, out
    assert not _planted_sequences(out)
    assert "round(s) complete" in out and "[/INST]" in out
