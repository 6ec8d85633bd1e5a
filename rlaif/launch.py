"""Training stages on several processes, GPUs or machines: `rlaif run` launches the round's training stage
(train, sft, rl: the stages on the shared trainer loop) under torchrun or `accelerate launch`, waits for it,
and goes on with the round. Nothing here schedules or talks to machines: the launcher does (torchrun's c10d
rendezvous; on a cluster the command named by `launch.prefix`, e.g. srun, starts one launcher per node).

    [launch]
    processes = 8          # training processes per node (one per GPU)
    nodes = 1

Every process runs the same stage module (`python -m rlaif.launch_worker RUN --round K --stage NAME ...`): the trainer
loop splits each optimizer step's examples over the processes and sums their gradients, so the step losses are
those of one process; rank 0 alone writes files (checkpoints, the adapter, the step log). Rank 0 reports
progress and, at the end, the stage's figures to the runner as JSON lines on stdout; the processes' stderr goes
to round_<k>/<stage>.launch.log. A kill of any process (or of the runner) ends them all; the next
`rlaif run` resumes from the last checkpoint, as it does in one process.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

from rlaif.config.launch import LaunchConfig
from rlaif.data import create_file
from rlaif.progress import Progress
from rlaif.recompute import CHECKPOINTING_ENV
from rlaif.sharding import SHARD_ENV
from rlaif.trainer import distributed

EVENT = "@rlaif-launch "
"""The prefix of the lines rank 0 sends the runner (progress, figures, errors); other lines are shown as notes."""

TRAINING = ("dpo", "sft", "rl")
"""The stages launched on several processes (those on the shared trainer loop)."""


# -- the runner's side ------------------------------------------------------------------------------------


def command(
    cfg: LaunchConfig, run_dir: Path, k: int, stage: str, model: str, overrides: list[str]
) -> list[str]:
    """The launcher command that runs `stage` of round k on every process."""
    worker = [
        "-m",
        "rlaif.launch_worker",
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

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LaunchFailed(RuntimeError):
    """The launched stage failed; the message says why and what to do."""


def launch(cfg: LaunchConfig, round_, stage: str, overrides: list[str], progress: Progress) -> dict:
    """Run `stage` of round `r` under the launcher; returns the stage's figures (sent by rank 0)."""
    cmd = command(cfg, round_.run.dir, round_.k, stage, round_.model, overrides)
    log = round_.dir / f"{stage}.launch.log"
    world = cfg.processes * cfg.nodes
    progress.note(f"round {round_.k}: {stage} on {world} processes ({cfg.launcher}); their log: {log}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", SHARD_ENV: cfg.shard}
    if cfg.activation_checkpointing:
        env[CHECKPOINTING_ENV] = "1"
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


def close_process_group() -> None:
    """Leave the process group at the end of a distributed command: wait for every process, collect the models
    still alive in reference cycles, then destroy the group. Destroying it before a trained FSDP2 model was
    collected (its sharded parameters refer to the group's device mesh) made a process abort at interpreter exit
    about once in twenty runs ("terminate called without an active exception", tests/test_sharding.py); with the
    collection first, 70 runs in a row passed. Nothing when there is no group."""
    import torch

    if not torch.distributed.is_initialized():
        return
    torch.distributed.barrier()
    gc.collect()
    torch.distributed.destroy_process_group()


def is_main() -> bool:
    """True in the process that writes files: rank 0, or the only process."""

    return distributed()[1] == 0
