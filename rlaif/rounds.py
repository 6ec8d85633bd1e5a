"""Rounds of constitutional self-alignment: each round runs the configured stages in order (`round.stages`,
default generate -> judge -> preferences -> dpo -> merge; each a module of rlaif/stages/; round 1 may run
its own list, `round.first_stages`, e.g. critique -> sft -> merge).

Round k (k >= 1) starts from round k-1's model (round 0 is the initial model), which is its generator, its
reference and, by default, its judge; a stage that produces a model (merge) makes it the round's model. Each
round writes `runs/<name>/round_<k>/`: the stages' files, `stages.json` (each stage's figures and time, written
as it completes) and, last, `metrics.json`, whose presence marks the round complete.

Resume is decided here, once, the same way for every stage: a stage is skipped when its figures are in
stages.json and the outputs it declares exist; once a stage runs, every later stage of the round runs again
(its inputs may have changed). Every file is written atomically, so a killed run resumes where it stopped,
without duplicated or lost records.

    rlaif run runs/demo --rounds 2
"""

from __future__ import annotations

import contextlib
import errno
import importlib
from pathlib import Path

from rlaif import recompute
from rlaif.config import RENAMED, load_config, new_stage_names
from rlaif.data import SCHEMA_VERSION, FolderBusy, FolderLock, clear, load_prompts, real_dir, write_json
from rlaif.endpoints import EndpointError
from rlaif.launch import TRAINING, LaunchFailed, launch
from rlaif.layout import portable, read_json, resolve, round_dir, round_model
from rlaif.manifest import write_manifest
from rlaif.models import model_hash, pick_device, resolve_model
from rlaif.pool import ModelPool
from rlaif.principles import load_constitution
from rlaif.privacy import check_round
from rlaif.progress import SILENT, Progress
from rlaif.stages import Round, Run
from rlaif.trainer import TrainingDiverged


def stage_module(name: str):
    return importlib.import_module(f"rlaif.stages.{name}")


class StageError(RuntimeError):
    """A stage failed for a reason the user can act on (disk full, out of memory); the message says what to change."""


@contextlib.contextmanager
def stage_errors(stage: str, rdir: Path, lower: str):
    """Turn disk-full and out-of-memory failures into a message naming the stage and what to change (`lower`).
    Files already written stay whole (atomic writes), so rerunning the same command resumes."""

    full = (
        f"{stage}: the disk is full while writing under {rdir}. Free space or move the run folder, then run "
        "the same command again: completed files are kept and the stage resumes."
    )
    try:
        yield
    except TrainingDiverged as e:
        raise StageError(f"{stage}: {e}") from None
    except EndpointError as e:
        raise StageError(
            f"{stage}: {e}. Completed stages are kept: run the same command again once the endpoints answer."
        ) from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise StageError(full) from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise StageError(f"{stage}: cannot write under {rdir}: {e.strerror} ({e.filename})") from None
        raise
    except MemoryError:
        raise StageError(
            f"{stage}: out of memory. Lower {lower} (--set key=value), then run the same command "
            "again: completed stages are kept."
        ) from None
    except Exception as e:
        text = str(e).lower()
        # torch and safetensors report a full disk with their own error types: torch.save as "file write
        # failed", safetensors as an I/O error carrying the OS message
        if "no space left on device" in text or "file write failed" in text:
            raise StageError(full) from None
        # torch.OutOfMemoryError (CUDA) and CPU allocator failures are RuntimeErrors naming memory
        if not isinstance(e, RuntimeError) or not any(
            m in text for m in ("out of memory", "can't allocate memory", "not enough memory")
        ):
            raise
        raise StageError(
            f"{stage}: out of memory ({str(e).splitlines()[0][:200]}). Lower {lower} "
            "(--set key=value), then run the same command again: completed stages are kept."
        ) from None


def open_run(run_dir: str | Path, config, progress: Progress = SILENT, overrides: list[str] = ()) -> Run:
    """Everything the rounds of a run share, checked before the first stage of the first round."""
    run_dir = Path(run_dir).resolve()
    prompts_path = Path(config.data.prompts)
    if not prompts_path.is_absolute():
        prompts_path = run_dir / prompts_path
    device = pick_device(config.model.device)
    run = Run(
        dir=run_dir,
        config=config,
        initial=resolve_model(config.model.policy, notify=progress.note),
        pool=ModelPool(config.model, device, config.vllm, config.seed, notify=progress.note),
        progress=progress,
        constitution=load_constitution(config.judge.constitution, run_dir),
        prompts=load_prompts(prompts_path),
        prompts_path=prompts_path,
        device=device,
        overrides=list(overrides),
    )
    for name in config.round.all_stages():
        stage_module(name).validate(run)
    return run


def run_stage(round_: Round, name: str, module) -> dict:
    """The stage's figures: run here, or, for a training stage with `launch.processes` (or `launch.nodes`) above
    1, on that many processes under the launcher (rlaif/launch.py), this process waiting."""

    cfg = round_.config.launch
    if name not in TRAINING or not cfg.active:
        with recompute.requested_for(name in TRAINING and cfg.activation_checkpointing):
            return module.run(round_)
    round_.pool.close()  # the processes load their own copies: this one holds no model or engine meanwhile
    try:
        return launch(cfg, round_, name, round_.run.overrides, round_.progress)
    except LaunchFailed as e:
        raise StageError(str(e)) from None


def run_round(run: Run, k: int) -> dict:
    """Run (or finish) round k; returns its metrics."""
    rdir = round_dir(run.dir, k)
    done = read_json(rdir / "metrics.json")
    if done is not None:
        return new_stage_names(done)
    real_dir(rdir)
    # temp files of a killed writer are never complete (data.write_atomic renames only finished files)
    for stale in rdir.glob(".*.tmp"):
        clear(stale)  # a link as the link, a folder too
    parent = round_model(run.dir, k - 1, run.initial)
    r = Round(run, k, rdir, parent, parent)
    # a round folder written before a stage was renamed names it the old way
    stages = {RENAMED.get(k, k): v for k, v in (read_json(rdir / "stages.json") or {}).items()}
    rerun = False  # once a stage runs, the stages after it run again too
    names = run.config.round.stages_for(k)
    if not stages:  # a new round: one that could not train within the privacy budget never starts
        check_round(run, k, names)
    for name in names:
        module = stage_module(name)
        figures = stages.get(name)
        if rerun or figures is None or not all((rdir / o).exists() for o in module.outputs(figures)):
            rerun = True
            with stage_errors(name, rdir, module.LOWER_ON_OOM):
                figures = run_stage(r, name, module)
                if module.PRODUCES_MODEL:  # stored relative to the run folder: a moved run finds it
                    figures = {**figures, "model": portable(figures.get("model", r.model), run.dir)}
                stages[name] = figures
                write_json(rdir / "stages.json", stages)
        if module.PRODUCES_MODEL:
            r.model = resolve(figures["model"], run.dir)

    metrics = {
        "schema": SCHEMA_VERSION,
        "round": k,
        **stages,
        "model": {
            "path": portable(r.model, run.dir),
            "parent": portable(parent, run.dir),
            "hash": model_hash(r.model),
        },
        "time": {name: stages[name]["seconds"] for name in names},
    }
    with stage_errors("metrics", rdir, "nothing (metrics.json is small)"):
        write_json(rdir / "metrics.json", metrics)
    return metrics


def run(
    run_dir: str | Path, rounds: int, overrides: list[str] = (), progress: Progress = SILENT
) -> list[dict]:
    """Run (or resume) rounds 1..`rounds` of the run in `run_dir`; returns each round's metrics."""
    config = load_config(run_dir, overrides)
    with RunLock(run_dir):
        state = open_run(run_dir, config, progress, list(overrides))
        results, ran = [], []
        try:
            for k in range(1, rounds + 1):
                complete = (round_dir(state.dir, k) / "metrics.json").is_file()
                results.append(run_round(state, k))
                if not complete:
                    ran.append(k)
                    with stage_errors("manifest", state.dir, "nothing (manifest.json is small)"):
                        write_manifest(state, results, list(overrides), ran)
        finally:
            state.pool.close()
    return results


class RunBusy(FolderBusy):
    """Another process is running this run folder."""


class RunLock(FolderLock):
    """One `rlaif run` per run folder: an exclusive flock on `<run>/.lock` (see data.FolderLock)."""

    def __init__(self, run_dir: str | Path):
        super().__init__(
            Path(run_dir) / ".lock",
            "already being run by pid {holder}; wait for it to finish or stop it (a killed run releases the "
            "folder at once)",
            RunBusy,
        )
