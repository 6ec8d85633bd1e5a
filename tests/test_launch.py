"""`rlaif run` with `launch.processes = 2`: the round's training stage runs under torchrun (two gloo processes
on the CPU) and trains exactly as one process does; a killed training process resumes like a one-process run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlaif.config import load_config
from rlaif.data import read_jsonl
from rlaif.launch import EVENT, LaunchConfig, LaunchFailed, command
from rlaif.progress import Progress
from rlaif.rounds import run
from tests.conftest import ROOT


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in ("config.toml", "prompts.jsonl"):
        (dst / f).write_text((src / f).read_text())
    return dst


def _logs(run_dir: Path, rounds: int, name: str = "train_log.jsonl") -> list[list[dict]]:
    return [read_jsonl(run_dir / f"round_{k}" / name) for k in range(1, rounds + 1)]


def _same_steps(got: list[dict], want: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want] and len(want) >= 2
    for a, b in zip(got, want, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4, abs=1e-6)
        assert a["lr"] == b["lr"]


@pytest.fixture
def launched_env(monkeypatch):
    # the launched processes import rlaif from this checkout, installed or not
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_two_rounds_on_two_training_processes_match_one_process(tiny_run, tmp_path, launched_env):
    one = _copy(tiny_run, tmp_path / "one")
    run(one, rounds=2)
    two = tiny_run
    results = run(two, rounds=2, overrides=["launch.processes=2"])
    assert len(results) == 2
    for got, want in zip(_logs(two, 2), _logs(one, 2), strict=True):
        _same_steps(got, want)
    for k in (1, 2):
        a = json.loads((one / f"round_{k}" / "metrics.json").read_text())
        b = json.loads((two / f"round_{k}" / "metrics.json").read_text())
        assert b["dpo"]["pairs"] == a["dpo"]["pairs"] and b["dpo"]["steps"] == a["dpo"]["steps"]
        assert (a["dpo"]["processes"], b["dpo"]["processes"]) == (1, 2)
        assert b["model"]["hash"] != a["model"]["parent"]  # a new merged model each round
        log = (two / f"round_{k}" / "dpo.launch.log").read_text()
        assert "torch.distributed.run" in log and "--nproc-per-node=2" in log
    # the merged models agree to float tolerance: round 2 sampled the same tokens from them
    got, want = (
        read_jsonl(two / "round_2" / "responses.jsonl"),
        read_jsonl(one / "round_2" / "responses.jsonl"),
    )
    assert [x["token_ids"] for x in got] == [x["token_ids"] for x in want]
    for a, b in zip(got, want, strict=True):
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-4)


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_sft_stage_launched_on_two_processes_matches_one(tiny_run, tmp_path, launched_env, launcher):
    data = tmp_path / "sft.jsonl"
    rows = [{"prompt": f"Question {i}: bake bread?", "completion": "Mix flour and water."} for i in range(7)]
    data.write_text("".join(json.dumps(x) + "\n" for x in rows))
    sets = ['round.stages=["sft","merge"]', f"sft.data=[{json.dumps(str(data))}]", "sft.batch_size=2"]
    one = _copy(tiny_run, tmp_path / "one")
    run(one, rounds=1, overrides=sets)
    run(tiny_run, rounds=1, overrides=[*sets, "launch.processes=2", f"launch.launcher={launcher}"])
    _same_steps(_logs(tiny_run, 1, "sft_log.jsonl")[0], _logs(one, 1, "sft_log.jsonl")[0])
    assert json.loads((tiny_run / "round_1" / "metrics.json").read_text())["sft"]["processes"] == 2


def _launched_workers(run_dir: Path) -> list[tuple[int, int]]:
    """(pid, rank) of the running `python -m rlaif.launch_worker` processes of this run."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"rlaif.launch_worker" in cmd and str(run_dir).encode() in cmd:
            rank = [e for e in env if e.startswith(b"RANK=")]
            if rank:
                found.append((int(entry.name), int(rank[0][5:])))
    return found


def test_a_killed_training_process_resumes_from_its_checkpoint(tiny_run, tmp_path, launched_env):
    """SIGKILL rank 1 mid-training: the run stops with a message (exit 1, a failed stage), nothing is left running, and the
    same command resumes from the checkpoint and logs the uninterrupted run's losses."""
    prompts = [json.dumps({"prompt": f"Question {i}: how do I bake bread?"}) for i in range(40)]
    (tiny_run / "prompts.jsonl").write_text("\n".join(prompts) + "\n")
    sets = ["dpo.checkpoint_every=1", "dpo.batch_size=1", "dpo.epochs=3"]
    reference = _copy(tiny_run, tmp_path / "reference")
    run(reference, rounds=1, overrides=sets)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "rlaif.cli", "run", str(tiny_run), "--rounds", "1"]
    args += [x for s in [*sets, "launch.processes=2"] for x in ("--set", s)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = tiny_run / "round_1" / "checkpoint" / "progress.json"
    t0 = time.time()
    while not ckpt.exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() - t0 < 300
        time.sleep(0.01)
    victims = [pid for pid, rank in _launched_workers(tiny_run) if rank == 1]
    assert victims, "no rank-1 training process found"
    os.kill(victims[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]  # a failed stage, as in one process
    assert "training processes failed" in err and "resumes from its last checkpoint" in err
    time.sleep(1)
    assert _launched_workers(tiny_run) == []  # torchrun ended the other process

    rerun = subprocess.run(args, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    got = json.loads((tiny_run / "round_1" / "metrics.json").read_text())
    assert got["dpo"]["resumed_at_step"] >= 1
    _same_steps(_logs(tiny_run, 1)[0], _logs(reference, 1)[0])


def test_the_runner_dying_ends_its_training_processes(tiny_run, launched_env):
    prompts = [json.dumps({"prompt": f"Question {i}: how do I bake bread?"}) for i in range(40)]
    (tiny_run / "prompts.jsonl").write_text("\n".join(prompts) + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "rlaif.cli", "run", str(tiny_run), "--rounds", "1"]
    args += ["--set", "launch.processes=2", "--set", "dpo.batch_size=1", "--set", "dpo.epochs=3"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while len(_launched_workers(tiny_run)) < 2:
        assert proc.poll() is None and time.time() - t0 < 300
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t0 = time.time()
    while _launched_workers(tiny_run) and time.time() - t0 < 60:
        time.sleep(0.2)
    assert _launched_workers(tiny_run) == []


def test_launcher_commands_for_one_node_several_nodes_and_accelerate(tmp_path):
    one = command(LaunchConfig(processes=8), tmp_path, 2, "train", "/m", ["dpo.beta=0.2"])
    assert one[1:5] == ["-m", "torch.distributed.run", "--nproc-per-node=8", "--standalone"]
    assert one[5:] == [
        "-m", "rlaif.launch_worker", str(tmp_path), "--round", "2", "--stage", "train", "--model", "/m",
        "--set", "dpo.beta=0.2",
    ]  # fmt: skip
    cfg = LaunchConfig(processes=8, nodes=4, rdzv_endpoint="node0:29400", prefix=["srun", "--nodes=4"])
    many = command(cfg, tmp_path, 1, "rl", "/m", [])
    assert many[:2] == ["srun", "--nodes=4"]
    assert "--nnodes=4" in many and "--rdzv-endpoint=node0:29400" in many and "--standalone" not in many
    acc = command(LaunchConfig(processes=2, launcher="accelerate"), tmp_path, 1, "sft", "/m", [])
    assert acc[1:4] == ["-m", "accelerate.commands.launch", "--num_processes=2"]


def test_launch_keys_are_checked(tiny_run):
    from rlaif.checks import ConfigError

    for bad, key in [
        ("launch.processes=0", "launch.processes"),
        ('launch.launcher="mpirun"', "launch.launcher"),
        ('launch.rdzv_endpoint="node0"', "launch.rdzv_endpoint"),
    ]:
        with pytest.raises(ConfigError, match=key):
            load_config(tiny_run, [bad])
    with pytest.raises(ConfigError, match="launch.launcher"):
        load_config(tiny_run, ["launch.nodes=2", 'launch.launcher="accelerate"'])
    assert EVENT.startswith("@rlaif")


def test_the_launcher_gets_sigterm_when_the_runner_dies(tmp_path):
    """What ends the training processes when the runner is killed: the launcher is started so that the
    kernel sends it SIGTERM at the runner's death (torchrun then ends its workers)."""
    pid_file = tmp_path / "pid"
    runner = (
        "import subprocess, sys, time\n"
        "from rlaif.launch import _die_with_parent\n"
        "p = subprocess.Popen(['sleep', '300'], preexec_fn=_die_with_parent)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", runner], env={**os.environ, "PYTHONPATH": str(ROOT)})
    t0 = time.time()
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() - t0 < 60
        time.sleep(0.05)
    child = int(pid_file.read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t0 = time.time()
    while Path(f"/proc/{child}").exists() and time.time() - t0 < 10:
        try:  # reap it if it became ours (it is re-parented to init, or to this process as subreaper)
            os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            pass
        if Path(f"/proc/{child}/status").exists() and "zombie" in Path(f"/proc/{child}/status").read_text():
            break
        time.sleep(0.05)
    status = Path(f"/proc/{child}/status")
    assert not status.exists() or "zombie" in status.read_text(), "the launcher outlived the runner"


def test_the_process_group_is_closed_after_the_models_in_reference_cycles_are_freed(tmp_path, monkeypatch):
    """close_process_group(): an FSDP2 model holds the group through its device mesh, often inside reference
    cycles; destroying the group while such a model lives left gloo's threads to interpreter exit, where a process
    aborted about once in twenty runs. The models must be gone when the group is destroyed."""
    import gc
    import weakref

    import torch
    import torch.distributed as dist

    from rlaif.launch import close_process_group

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)

    class Model(
        torch.nn.Module
    ):  # stands in for a trained model that refers to itself (hooks, PEFT wrappers)
        pass

    model = Model()
    model.me = [model]
    alive = weakref.ref(model)
    del model
    seen = []
    destroy = dist.destroy_process_group
    monkeypatch.setattr(
        dist, "destroy_process_group", lambda *a, **k: (seen.append(alive() is not None), destroy())[1]
    )
    gc.disable()  # no automatic collection in between: only close_process_group may free the cycle
    try:
        close_process_group()
    finally:
        gc.enable()
    assert seen == [False]  # destroyed once, with the model already freed
    assert not dist.is_initialized()
    close_process_group()  # no group: nothing to do


class _Seen(Progress):
    def __init__(self):
        self.events = []

    def stage(self, name, total=None):
        self.events.append(("stage", name, total))

    def advance(self, n=1):
        self.events.append(("advance", n))

    def note(self, message):
        self.events.append(("note", message))


def _launch_script(monkeypatch, tmp_path, script: str):
    """launch() on a fake launcher: a Python script in place of torchrun, writing what its processes would."""
    import rlaif.launch as launch_mod

    monkeypatch.setattr(launch_mod, "command", lambda *a: [sys.executable, "-c", script])
    rdir = tmp_path / "round_1"
    rdir.mkdir(exist_ok=True)
    round_ = SimpleNamespace(run=SimpleNamespace(dir=tmp_path), k=1, model="/m", dir=rdir)
    seen = _Seen()
    return lambda: launch_mod.launch(LaunchConfig(processes=2), round_, "train", [], seen), seen, rdir


def _event(**e) -> str:
    return f"print({EVENT + json.dumps(e)!r}, flush=True)\n"


def test_launch_relays_progress_and_returns_rank_0s_figures(monkeypatch, tmp_path):
    script = (
        "print('warming up', flush=True)\n"
        + _event(event="stage", name="dpo", total=3)
        + _event(event="advance", n=2)
        + _event(event="note", message="step 2")
        + _event(event="figures", figures={"loss": 0.5})
    )
    go, seen, _ = _launch_script(monkeypatch, tmp_path, script)
    assert go() == {"loss": 0.5}
    assert seen.events[1:] == [
        ("note", "warming up"),
        ("stage", "dpo", 3),
        ("advance", 2),
        ("note", "step 2"),
    ]


def test_a_failed_launch_names_the_error_or_the_log_and_how_to_resume(monkeypatch, tmp_path):
    # a process reports its error: that message, the first one, is the stage's
    script = _event(event="error", message="rank 1: out of memory") + _event(event="error", message="later")
    go, _, _ = _launch_script(monkeypatch, tmp_path, script + "raise SystemExit(1)\n")
    with pytest.raises(LaunchFailed, match="^rank 1: out of memory$"):
        go()
    # a process dies without a word: the exit code, the log and its end, and the rerun that resumes
    script = "import sys\nprint('Traceback: boom', file=sys.stderr)\nraise SystemExit(3)\n"
    go, _, rdir = _launch_script(monkeypatch, tmp_path, script)
    with pytest.raises(LaunchFailed) as e:
        go()
    log = rdir / "train.launch.log"
    assert "exit code 3" in str(e.value) and str(log) in str(e.value) and "Traceback: boom" in str(e.value)
    assert "Run the same command again" in str(e.value) and "Traceback: boom" in log.read_text()
    # exit 0 without the figures rank 0 sends last is a failure too
    go, _, _ = _launch_script(monkeypatch, tmp_path, _event(event="stage", name="dpo", total=1))
    with pytest.raises(LaunchFailed, match="exit code 0"):
        go()
