"""Nothing rlaif writes lands outside the run folder: a symlink planted where rlaif is about to write (the
run lock, a temp folder, a round's adapter or model, the round folder itself) is removed or refused, never
written through. Each victim's bytes must be unchanged. Also the small input faults of the same review:
weights that are not finite, ids that are paths, lone surrogates, damaged checkpoints, `--set` errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.config import load_config
from rlaif.data import DataError, clear, create_file, fresh_dir, read_jsonl, real_dir, replace_dir, temp_name

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def victim(tmp_path):
    """A folder outside the run with one file whose bytes a write through a link would change."""
    d = tmp_path / "victim"
    d.mkdir()
    (d / "precious.txt").write_bytes(b"do not touch\n")
    return d


def _untouched(victim: Path) -> bool:
    return (
        sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
        and (victim / "precious.txt").read_bytes() == b"do not touch\n"
    )


# -- the helpers ----------------------------------------------------------------------------------------


def test_helpers_remove_links_and_never_follow_them(tmp_path, victim):
    link = tmp_path / "x.tmp"
    link.symlink_to(victim)
    assert fresh_dir(link).is_dir() and not link.is_symlink() and _untouched(victim)
    target = tmp_path / "model"
    target.symlink_to(victim)
    (link / "weights").write_text("new")
    replace_dir(link, target)
    assert (target / "weights").read_text() == "new" and not target.is_symlink() and _untouched(victim)
    log = tmp_path / "stage.launch.log"
    log.symlink_to(victim / "precious.txt")
    with create_file(log) as f:
        f.write("log")
    assert log.read_text() == "log" and not log.is_symlink() and _untouched(victim)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    clear(dangling)
    assert not os.path.lexists(dangling)
    tmp = temp_name(tmp_path / "eval.png")
    assert tmp.is_file() and not tmp.is_symlink() and tmp.parent == tmp_path


def test_a_folder_where_a_file_is_written_is_a_message(tmp_path):
    from rlaif.data import write_json

    (tmp_path / "stages.json").mkdir()
    with pytest.raises(DataError, match=r"stages.json: is a folder where rlaif writes a file"):
        write_json(tmp_path / "stages.json", {})
    link = tmp_path / "metrics.json"
    link.symlink_to(tmp_path / "stages.json")  # a link to a folder: replaced, the folder stays
    write_json(link, {"a": 1})
    assert not link.is_symlink() and (tmp_path / "stages.json").is_dir()


def test_a_round_folder_that_is_a_link_is_refused(tmp_path, victim):
    (tmp_path / "round_1").symlink_to(victim)
    with pytest.raises(DataError, match=r"round_1: is a symbolic link .*remove the link"):
        real_dir(tmp_path / "round_1")
    assert _untouched(victim)


# -- through `rlaif run` --------------------------------------------------------------------------------


def test_a_lock_that_is_a_link_is_refused_and_its_target_untouched(tiny_run, victim, capsys):
    (tiny_run / ".lock").symlink_to(victim / "precious.txt")
    assert main(["run", str(tiny_run), "--set", "data.prompts=/nonexistent.jsonl"]) == 2
    assert main(["run", str(tiny_run)]) == 2
    assert ".lock: is a symbolic link" in capsys.readouterr().err
    assert _untouched(victim)


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_lock_that_is_a_folder_or_a_fifo_is_a_clear_error(tiny_run, capsys, kind):
    lock = tiny_run / ".lock"
    lock.mkdir() if kind == "folder" else os.mkfifo(lock)
    assert main(["run", str(tiny_run)]) == 2
    err = capsys.readouterr().err
    assert ".lock: is" in err and "remove it and run again" in err and "Traceback" not in err


def test_planted_links_at_temp_names_and_outputs_are_replaced_not_followed(tiny_run, tmp_path, capsys):
    """adapter.tmp, model.tmp, checkpoint.tmp and model itself are links to folders outside the run: the
    round completes, its adapter and model are real folders inside it, and no victim changed."""
    r1 = tiny_run / "round_1"
    r1.mkdir()
    victims = {}
    for name in ("adapter.tmp", "model.tmp", "checkpoint.tmp", "model"):
        v = tmp_path / f"victim-{name}"
        v.mkdir()
        (v / "precious.txt").write_bytes(b"do not touch\n")
        (r1 / name).symlink_to(v)
        victims[name] = v
    code = main(["run", str(tiny_run), "--rounds", "1", "--set", "dpo.checkpoint_every=1"])
    assert code == 0, capsys.readouterr().err
    for name, v in victims.items():
        assert _untouched(v), name
    for name in ("adapter", "model"):
        assert (r1 / name).is_dir() and not (r1 / name).is_symlink()
    assert not [p.name for p in r1.iterdir() if p.name.endswith((".tmp", ".old"))]


def test_a_round_folder_link_stops_the_run_before_any_write(tiny_run, victim, capsys):
    (tiny_run / "round_1").symlink_to(victim)
    assert main(["run", str(tiny_run), "--rounds", "1"]) == 2
    assert "round_1: is a symbolic link" in capsys.readouterr().err
    assert _untouched(victim)


def test_merge_replaces_a_model_link(tiny_run, victim, capsys):
    """`rlaif merge` of a round kept as an adapter, whose round_1/model is a planted link: the merged
    weights land in the run, the link's target is untouched, no model.tmp is left."""
    assert main(["run", str(tiny_run), "--rounds", "1", "--set", "merge.defer=true"]) == 0
    r1 = tiny_run / "round_1"
    clear(r1 / "model")
    (r1 / "model").symlink_to(victim)
    assert main(["merge", str(tiny_run), "--round", "1"]) == 0, capsys.readouterr().err
    assert (r1 / "model" / "config.json").is_file() and not (r1 / "model").is_symlink()
    assert _untouched(victim) and not (r1 / "model.tmp").exists()


# -- the small faults -----------------------------------------------------------------------------------


def _constitution(tmp_path, weights: str, principle_weight: str = "1.0") -> Path:
    pdir = tmp_path / "principles"
    pdir.mkdir(exist_ok=True)
    src = (ROOT / "principles" / "hate.toml").read_text()
    lines = [x for x in src.splitlines() if not x.startswith("weight")]
    (pdir / "hate.toml").write_text("\n".join(lines) + f"\nweight = {principle_weight}\n")
    c = tmp_path / "c.toml"
    c.write_text(
        f'name = "c"\ntemplate = "{ROOT}/constitution/templates/pairwise.toml"\nprinciples_dir = "{pdir}"\n'
        f"[principles]\n{weights}\n"
    )
    return c


@pytest.mark.parametrize(
    "weights, principle_weight, says",
    [
        ("hate = inf", "1.0", "finite number >= 0"),
        ("hate = nan", "1.0", "finite number >= 0"),
        ("hate = 1e300", "1e300", "overflows"),
        ("hate = 1", "nan", "finite number > 0"),
        ("hate = 1", "inf", "finite number > 0"),
        ('"../../outside/evil" = 1', "1.0", "not a principle id"),
    ],
)
def test_bad_weights_and_ids_fail_the_check(tmp_path, capsys, weights, principle_weight, says):
    c = _constitution(tmp_path, weights, principle_weight)
    (tmp_path / "outside").mkdir()
    assert main(["principles", "check", str(c), "--no-critique"]) == 2
    assert says in capsys.readouterr().err


def test_a_lone_surrogate_is_named_with_its_line(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"prompt": "bad \\ud800 text"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: prompt holds a lone surrogate"):
        read_jsonl(prompts)


def test_a_fifo_is_not_a_missing_file(tmp_path):
    fifo = tmp_path / "prompts.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        read_jsonl(fifo)


def test_set_errors_name_the_override_not_the_file(tiny_run):
    with pytest.raises(Exception, match=r"^--set dpo.beta=-1: dpo.beta: must be > 0"):
        load_config(tiny_run, ["dpo.beta=-1"])
    (tiny_run / "config.toml").write_text((tiny_run / "config.toml").read_text() + "\n[merge]\nnope = 1\n")
    with pytest.raises(Exception, match=r"config.toml: merge.nope: unknown key"):
        load_config(tiny_run, ["dpo.beta=0.2"])


def test_a_damaged_checkpoint_says_so_and_never_suggests_unsafe_loading(tiny_run, capsys):
    """A checkpoint whose state.pt is a pickle torch refuses to load safely: the stage stops naming the
    folder and how to discard it, without torch's advice to turn weights_only off."""
    import pickle

    assert main(["run", str(tiny_run), "--rounds", "1", "--set", "dpo.checkpoint_every=1"]) == 0
    r1 = tiny_run / "round_1"
    ckpt = r1 / "checkpoint"
    ckpt.mkdir()
    fingerprint = json.loads((r1 / "adapter" / "training.json").read_text())["fingerprint"]
    (ckpt / "progress.json").write_text(json.dumps({"step": 1, "fingerprint": fingerprint, "log": []}))
    (ckpt / "state.pt").write_bytes(pickle.dumps(os.system))
    for f in ("stages.json", "metrics.json"):
        (r1 / f).unlink()
    clear(r1 / "adapter")
    assert main(["run", str(tiny_run), "--rounds", "1", "--set", "dpo.checkpoint_every=1"]) == 2
    err = capsys.readouterr().err
    assert "damaged or not a checkpoint rlaif wrote" in err and f"rm -r {ckpt}" in err
    assert "weights_only" not in err


def test_bad_numbers_on_the_command_line_are_refused_by_the_parser(tiny_run, capsys):
    for argv in (
        ["pairs", str(tiny_run), "--limit", "-1"],
        ["sample", "--run", str(tiny_run), "--round", "0", "--prompts", "p", "--realign", "nan"],
        ["report", str(tiny_run), "--examples", "-2"],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert "expected a whole number >= 0, got '-1'" in capsys.readouterr().err


def test_rm_eval_of_a_missing_model_names_the_shipped_heads(capsys):
    assert main(["rm", "eval", "--data", "x.jsonl", "--model", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "no such folder" in err and "smollm2-135m-harmless" in err and "reward.json," not in err


def test_rm_train_skips_pairs_without_a_preference(tmp_path, tiny_model, capsys):
    same = tmp_path / "same.jsonl"
    same.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "a"}) + "\n" for i in range(3))
    )
    assert (
        main(["rm", "train", "--pairs", str(same), "--model", tiny_model, "--out", str(tmp_path / "h")]) == 2
    )
    assert "state no preference" in capsys.readouterr().err
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(same.read_text() + json.dumps({"prompt": "q", "chosen": "yes", "rejected": "no"}) + "\n")
    assert (
        main(["rm", "train", "--pairs", str(mixed), "--model", tiny_model, "--out", str(tmp_path / "h")]) == 0
    )
    out = capsys.readouterr().out
    assert "skipped 3 pairs" in out and "nan" not in out and "fewer than 10 pairs" in out


def test_json_output_into_a_closed_pipe_ends_quietly(tiny_run):
    """`rlaif pairs --json | head -1`: no BrokenPipeError traceback."""
    r1 = tiny_run / "round_1"
    r1.mkdir()
    rec = {"prompt": "p", "x": "a" * 500, "y": "b", "principle": "hate", "kept": True, "p_x": 0.9}
    (r1 / "judgements.jsonl").write_text((json.dumps(rec) + "\n") * 2000)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = f"{sys.executable} -m rlaif.cli pairs {tiny_run} --json --limit 0 | head -1"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env)
    assert json.loads(proc.stdout)["x"] == "a" * 500
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
