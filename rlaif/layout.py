"""Where a run keeps things: `runs/<name>/round_<k>/` per round, a completed round's model, and which rounds
are complete (a round is complete once its metrics.json exists). Read-only: `report`, `eval`, `pairs` and
`export` read runs through here without importing the loop that writes them.

    python -c "from rlaif.layout import completed_rounds; print(completed_rounds('runs/demo'))"
"""

from __future__ import annotations

from pathlib import Path

from rlaif.config import load_config
from rlaif.data import DataError, read_json_file
from rlaif.data import portable as portable  # re-exported: run paths
from rlaif.data import resolve as resolve
from rlaif.models import resolve_model


def round_dir(run_dir: str | Path, k: int) -> Path:
    return Path(run_dir) / f"round_{k}"


def read_json(path: Path) -> dict | None:
    """A JSON object file of the run, or None when it does not exist; a damaged one is a DataError that
    names it and the repair."""
    return read_json_file(path)


def _rounds_with(run_dir: str | Path, name: str) -> list[int]:
    ks = []
    for d in Path(run_dir).glob("round_*"):
        suffix = d.name.removeprefix("round_")
        if suffix.isdigit() and (d / name).is_file():
            ks.append(int(suffix))
    return sorted(ks)


def completed_rounds(run_dir: str | Path) -> list[int]:
    return _rounds_with(run_dir, "metrics.json")


def judged_rounds(run_dir: str | Path) -> list[int]:
    """Rounds whose judging finished, complete or not."""
    return _rounds_with(run_dir, "judgements.jsonl")


def preference_rounds(run_dir: str | Path) -> list[int]:
    """Rounds whose preferences stage wrote its pairs, complete or not (what `rlaif review` reviews)."""
    return _rounds_with(run_dir, "preferences.jsonl")


def revised_rounds(run_dir: str | Path) -> list[int]:
    """Rounds whose critique stage wrote its revisions, complete or not."""
    return _rounds_with(run_dir, "revisions.jsonl")


def round_model(run_dir: str | Path, k: int, initial: str | None = None) -> str:
    """The model of round k (round 0 = the run's initial model: `initial`, or resolved from its config)."""
    if k == 0:
        if initial is not None:
            return initial

        return resolve_model(load_config(run_dir, []).model.policy)
    metrics = read_json(round_dir(run_dir, k) / "metrics.json")
    if metrics is None:
        raise DataError(f"{round_dir(run_dir, k)}: round {k} is not complete (run it first)")
    try:
        return resolve(metrics["model"]["path"], run_dir)
    except (KeyError, TypeError):
        raise DataError(
            f"{round_dir(run_dir, k) / 'metrics.json'}: damaged (no model.path); delete it and run the same "
            "command again"
        ) from None
