"""The package as users install it: `rlaif init` scaffolds a run folder with editable copies of the shipped
principles, and a wheel built from this tree carries everything a run needs (principles, constitutions, eval
sets, the demo, the reward heads) and runs from a fresh virtual environment outside the source tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.data import read_jsonl

ROOT = Path(__file__).resolve().parent.parent


def test_init_makes_a_run_folder_whose_principles_are_the_users_own(tmp_path, tiny_model, capsys):
    run = tmp_path / "mine"
    assert main(["init", str(run)]) == 0
    assert "rlaif run" in capsys.readouterr().out
    assert sorted(p.name for p in run.iterdir()) == [
        "config.toml",
        "constitution",
        "helpful-pairs.jsonl",
        "principles",
        "prompts.jsonl",
    ]
    assert 'constitution = "constitution/default.toml"' in (run / "config.toml").read_text()
    assert (run / "constitution" / "templates" / "pointwise.toml").is_file()
    assert main(["principles", "check", str(run / "constitution" / "default.toml")]) == 0
    # the copy is what the run reads: a principle added there, weighted far above the rest, judges the round
    mine = (run / "principles" / "answers.toml").read_text().replace('id = "answers"', 'id = "my-rule"')
    (run / "principles" / "my-rule.toml").write_text(mine)
    c = run / "constitution" / "default.toml"
    c.write_text(c.read_text() + "my-rule = 1000.0\n")
    sets = {
        "model.policy": json.dumps(tiny_model),
        "judge.mode": "pointwise",
        "judge.applicability": '"any"',  # the demo's "label" keeps a helpfulness rule off its harmful prompts
        "generate.guided_samples": "0",  # guidance follows the kind "label" gives a prompt: none under "any"
        "generate.max_new_tokens": "8",
        "data.prompts_per_round": "4",
        "round.stages": '["generate", "judge"]',
    }
    args = sum((["--set", f"{k}={v}"] for k, v in sets.items()), [])
    assert main(["run", str(run), "--rounds", "1", *args]) == 0
    judged = read_jsonl(run / "round_1" / "judgements.jsonl")
    assert judged and sum(j["principle"] == "my-rule" for j in judged) >= len(judged) - 1


def test_the_demo_as_shipped_begins_one_answer_to_each_harmful_prompt_as_a_refusal(tmp_path, tiny_model):
    """runs/demo with the default constitution: of each harmful prompt's two samples the second is drawn under the
    harmlessness guidance and is the refusal prefix with the model's continuation; benign prompts (helpfulness: no
    guidance) get plain samples; training pairs see the user's prompt alone."""
    run = tmp_path / "demo"
    run.mkdir()
    for name in ("config.toml", "prompts.jsonl", "helpful-pairs.jsonl"):
        shutil.copy(ROOT / "runs" / "demo" / name, run / name)
    prompts = read_jsonl(run / "prompts.jsonl")
    (run / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts[:3] + prompts[-3:]))
    sets = {
        "model.policy": json.dumps(tiny_model),
        "generate.max_new_tokens": "4",
        "generate.backend": '"transformers"',
        "round.stages": '["generate"]',
    }
    assert (
        main(["run", str(run), "--rounds", "1", *sum((["--set", f"{k}={v}"] for k, v in sets.items()), [])])
        == 0
    )
    kinds = {p["id"]: p["kind"] for p in read_jsonl(run / "prompts.jsonl")}
    assert sorted(set(kinds.values())) == ["benign", "harmful"]
    responses = read_jsonl(run / "round_1" / "responses.jsonl")
    assert len(responses) == 2 * len(kinds)
    for x in responses:
        if kinds[x["prompt_id"]] == "harmful" and x["sample"] == 1:
            assert x["guidance"] == "harmlessness" and x["prefix"] == "I'm sorry, but I can't" and x["system"]
            assert x["text"].startswith("I'm sorry, but I can't")
        else:
            assert "guidance" not in x
        assert isinstance(x["prompt"], str)


def test_init_refuses_a_folder_that_is_not_new(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    assert main(["init", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    assert main(["init", str(tmp_path / "link")]) == 2
    assert not any((tmp_path / "elsewhere").iterdir())
    (tmp_path / "empty").mkdir()
    assert main(["init", str(tmp_path / "empty")]) == 0


def test_a_wheel_runs_from_a_fresh_venv_outside_the_source_tree(tmp_path, tiny_model):
    """Build the wheel, install it (without dependencies) into a new venv, and from an empty folder: init, check
    the principles, run a round on the tiny model. The dependencies (torch, transformers ...) come from this
    interpreter's site-packages on PYTHONPATH, which holds no rlaif (the editable install's hook is a .pth file,
    which PYTHONPATH does not process): every rlaif file the commands read is the wheel's."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(ROOT),
            "-w",
            str(wheels),
        ],
        check=True,
        cwd=tmp_path,
    )
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' scratch folder in the source tree
    (wheel,) = wheels.glob("rlaif-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    env.pop("PYTHONSAFEPATH", None)

    def rlaif(*args):
        return subprocess.run(
            [venv / "bin" / "rlaif", *args], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )

    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import rlaif; print(rlaif.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(str(venv)), where
    got = rlaif("principles", "check")
    assert got.returncode == 0, got.stderr
    got = rlaif("principles")  # the default constitution, from the wheel
    assert got.returncode == 0 and "weapons" in got.stdout, got.stderr
    assert rlaif("init", "demo").returncode == 0
    for f in (
        "config.toml",
        "prompts.jsonl",
        "helpful-pairs.jsonl",
        "constitution/default.toml",
        "principles/weapons.toml",
    ):
        assert (work / "demo" / f).is_file(), f
    got = rlaif("principles", "check", "demo/constitution/default.toml")
    assert got.returncode == 0, got.stderr
    sets = ["model.policy=" + json.dumps(tiny_model), "generate.max_new_tokens=8", "data.prompts_per_round=4",
            "dpo.epochs=1", "dpo.max_length=64"]  # fmt: skip
    # the demo's judge is the shipped reward heads on the embedded model: heavy for this check; the heads' files
    # are in the wheel (listed below), the run here judges pointwise with the tiny model
    got = rlaif(
        "run",
        "demo",
        "--rounds",
        "1",
        "--set",
        "judge.mode=pointwise",
        *sum((["--set", s] for s in sets), []),
    )
    assert got.returncode == 0, got.stderr[-3000:]
    assert (work / "demo" / "round_1" / "metrics.json").is_file()
    got = rlaif("report", "demo")
    assert got.returncode == 0, got.stderr
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    for head in ("smollm2-135m-harmless", "smollm2-135m-helpful", "smollm2-135m-harmful-prompt"):
        assert any(n.startswith(f"rlaif/heads/{head}/") and n.endswith(".safetensors") for n in names), head
    for data in ("evals/injection.jsonl", "evals/harmful.jsonl", "constitution/templates/pairwise.toml"):
        assert f"rlaif/_shipped/{data}" in names, data
    # every module of the source tree is in the wheel
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "rlaif").rglob("*.py")}
    assert modules <= set(names), modules - set(names)


@pytest.mark.parametrize("name", ["principles", "constitution", "evals", "demo"])
def test_the_source_tree_reads_its_own_folders(name):
    from rlaif.shipped import FOLDERS, shipped

    assert shipped(name) == ROOT / FOLDERS[name]


def test_the_demos_offline_pairs_teach_an_answer_over_a_needless_refusal_on_prompts_the_rounds_do_not_sample():
    """runs/demo's `data.offline`: ordinary requests (none among its own prompts) whose chosen answer is never a
    refusal, and whose rejected one is a refusal in about half of them (the over-refusal the rounds must not learn)."""
    import tomllib

    from rlaif.data import load_feedback
    from rlaif.reward.refusals import is_refusal

    demo = ROOT / "runs" / "demo"
    data = tomllib.loads((demo / "config.toml").read_text())["data"]
    assert data["offline"] == ["helpful-pairs.jsonl"] and data["offline_share"] > 0
    pairs = load_feedback("helpful-pairs.jsonl", demo)
    assert len(pairs) == 48
    own = {p["prompt"] for p in read_jsonl(demo / "prompts.jsonl")}
    assert not own & {p["prompt"] for p in pairs}
    assert not any(is_refusal(p["chosen"]) for p in pairs)
    assert 15 <= sum(is_refusal(p["rejected"]) for p in pairs) <= 30
