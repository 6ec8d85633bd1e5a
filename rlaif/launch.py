"""Training stages on several processes, GPUs or machines: `rlaif run` launches the round's training stage
(train, sft, rl: the stages on the shared trainer loop) under torchrun or `accelerate launch`, waits for it,
and goes on with the round. Nothing here schedules or talks to machines: the launcher does (torchrun's c10d
rendezvous; on a cluster the command named by `launch.prefix`, e.g. srun, starts one launcher per node).

    [launch]
    processes = 8          # training processes per node (one per GPU)
    nodes = 1

Every process runs the same stage module (`python -m rlaif.launch RUN --round K --stage NAME ...`): the trainer
loop splits each optimizer step's examples over the processes and sums their gradients, so the step losses are
those of one process; rank 0 alone writes files (checkpoints, the adapter, the step log). Rank 0 reports
progress and, at the end, the stage's figures to the runner as JSON lines on stdout; the processes' stderr goes
to round_<k>/<stage>.launch.log. A kill of any process (or of the runner) ends them all; the next
`rlaif run` resumes from the last checkpoint, as it does in one process.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rlaif.checks import check, one_of
from rlaif.data import create_file
from rlaif.progress import Progress

EVENT = "@rlaif-launch "
"""The prefix of the lines rank 0 sends the runner (progress, figures, errors); other lines are shown as notes."""

TRAINING = ("train", "sft", "rl")
"""The stages launched on several processes (those on the shared trainer loop)."""


@dataclass
class LaunchConfig:
    processes: int = 1
    """Training processes per node (one per GPU); above 1 (or with nodes > 1) the training stages run under
    the launcher."""
    nodes: int = 1
    """Machines taking part in training; above 1 the launcher needs `rdzv_endpoint` and, usually, `prefix`."""
    launcher: str = "torchrun"
    """"torchrun" (torch.distributed.run) or "accelerate" (`accelerate launch`, one node)."""
    rdzv_endpoint: str = ""
    """host:port of the rendezvous for several nodes (torchrun's c10d store; the first node's address); empty
    = this machine's name, port 29500."""
    prefix: list[str] = field(default_factory=list)
    """A command that starts the launcher once on every node, put before it: e.g. ["srun", "--nodes=2",
    "--ntasks-per-node=1"] on Slurm. The run folder must be on a filesystem every node sees."""

    def __post_init__(self):
        check(self.processes >= 1, "launch.processes", "must be >= 1")
        check(self.nodes >= 1, "launch.nodes", "must be >= 1")
        one_of(self.launcher, ("torchrun", "accelerate"), "launch.launcher")
        check(
            self.launcher == "torchrun" or self.nodes == 1,
            "launch.launcher",
            "several nodes are launched with torchrun (its c10d rendezvous needs no per-node rank)",
        )
        check(
            not self.rdzv_endpoint or ":" in self.rdzv_endpoint,
            "launch.rdzv_endpoint",
            f"must be host:port, got {self.rdzv_endpoint!r}",
        )

    @property
    def active(self) -> bool:
        return self.processes * self.nodes > 1


# -- the runner's side ------------------------------------------------------------------------------------


def command(
    cfg: LaunchConfig, run_dir: Path, k: int, stage: str, model: str, overrides: list[str]
) -> list[str]:
    """The launcher command that runs `stage` of round k on every process."""
    worker = [
        "-m",
        "rlaif.launch",
        str(run_dir),
        "--round",
        str(k),
        "--stage",
        stage,
        "--model",
        model,
        *[x for o in overrides for x in ("--set", o)],
    ]
    if cfg.launcher == "accelerate":
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            f"--num_processes={cfg.processes}",
            "--num_machines=1",
            "--multi_gpu",  # torchrun underneath: on a CPU-only machine its processes join a gloo group
            *worker,
        ]
    cmd = [*cfg.prefix, sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={cfg.processes}"]
    if cfg.nodes == 1:
        cmd.append("--standalone")
    else:
        import socket

        endpoint = cfg.rdzv_endpoint or f"{socket.getfqdn()}:29500"
        cmd += [
            f"--nnodes={cfg.nodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id=rlaif-{os.getpid()}-{k}-{stage}",
        ]
    return cmd + worker


def _die_with_parent() -> None:
    """In the launcher's process, before exec: SIGTERM it when the runner dies, however the runner dies
    (torchrun then ends its workers), so a killed `rlaif run` leaves no training behind."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LaunchFailed(RuntimeError):
    """The launched stage failed; the message says why and what to do."""


def launch(cfg: LaunchConfig, r, stage: str, overrides: list[str], progress: Progress) -> dict:
    """Run `stage` of round `r` under the launcher; returns the stage's figures (sent by rank 0)."""
    cmd = command(cfg, r.run.dir, r.k, stage, r.model, overrides)
    log = r.dir / f"{stage}.launch.log"
    world = cfg.processes * cfg.nodes
    progress.note(f"round {r.k}: {stage} on {world} processes ({cfg.launcher}); their log: {log}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.processes)))
    figures, error = None, None
    with create_file(log) as err:
        err.write(shlex.join(cmd) + "\n")
        err.flush()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, preexec_fn=_die_with_parent
        )
        try:
            for line in proc.stdout:
                if not line.startswith(EVENT):
                    if line.strip():
                        progress.note(line.rstrip())
                    continue
                event = json.loads(line[len(EVENT) :])
                kind = event["event"]
                if kind == "stage":
                    progress.stage(event["name"], event["total"])
                elif kind == "advance":
                    progress.advance(event["n"])
                elif kind == "note":
                    progress.note(event["message"])
                elif kind == "figures":
                    figures = event["figures"]
                elif kind == "error":
                    error = error or event["message"]
            code = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    if error is not None:
        raise LaunchFailed(error)
    if code != 0 or figures is None:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise LaunchFailed(
            f"{stage}: the training processes failed (exit code {code}). Their log: {log}; its end:\n{tail}\n"
            "Run the same command again: training resumes from its last checkpoint."
        )
    return figures


# -- the processes' side ----------------------------------------------------------------------------------


class LineProgress(Progress):
    """Progress as JSON lines on stdout, for the runner to render (rank 0 only)."""

    def _send(self, **event) -> None:
        print(EVENT + json.dumps(event), flush=True)

    def stage(self, name, total=None):
        self._send(event="stage", name=name, total=total)

    def advance(self, n=1):
        self._send(event="advance", n=n)

    def note(self, message):
        self._send(event="note", message=str(message))


def init_process_group():
    """Join the process group torchrun / `accelerate launch` describe in the environment (NCCL on CUDA, each
    process on its own GPU; gloo on the CPU); nothing when there is one process. Returns (rank, world)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True in the process that writes files: rank 0, or the only process."""
    from rlaif.trainer import distributed

    return distributed()[1] == 0


def worker(argv: list[str]) -> int:
    import argparse

    import torch

    from rlaif.config import load_config
    from rlaif.layout import round_dir
    from rlaif.progress import SILENT
    from rlaif.rounds import open_run, stage_errors, stage_module
    from rlaif.stages import Round

    p = argparse.ArgumentParser(prog="python -m rlaif.launch")
    p.add_argument("run_dir")
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--stage", required=True, choices=TRAINING)
    p.add_argument("--model", required=True)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args(argv)

    rank, _ = init_process_group()
    progress = LineProgress() if rank == 0 else SILENT
    try:
        config = load_config(args.run_dir, args.set)
        state = open_run(args.run_dir, config, progress, args.set)
        rdir = round_dir(state.dir, args.round)
        r = Round(state, args.round, rdir, args.model, args.model)
        module = stage_module(args.stage)
        with stage_errors(args.stage, rdir, module.LOWER_ON_OOM):
            figures = module.run(r)
    except Exception as e:  # noqa: BLE001 - every failure goes to the runner as a message, then exit 1
        from rlaif.checks import ConfigError
        from rlaif.data import DataError
        from rlaif.models import ModelError
        from rlaif.rounds import StageError

        if not isinstance(e, StageError | ConfigError | DataError | ModelError):
            raise  # a bug: the traceback goes to the launch log
        print(EVENT + json.dumps({"event": "error", "message": str(e)}), flush=True)
        return 1
    if rank == 0:
        print(EVENT + json.dumps({"event": "figures", "figures": figures}), flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
