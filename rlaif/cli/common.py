"""What every verb shares: the consoles (markup off, controls visible: rlaif/untrusted.py), progress bars, error
lines, and the argument types and parsers of round lists and model references.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichBar

from rlaif.data import DataError
from rlaif.layout import round_model
from rlaif.models import resolve_model
from rlaif.progress import Progress
from rlaif.reward.format import resolve_reward_model
from rlaif.untrusted import console as literal_console
from rlaif.untrusted import join, literal

# every verb prints through these: markup off, controls made visible (rlaif/untrusted.py)
console = literal_console()
err = literal_console(stderr=True)


class RichProgress(Progress):
    """Progress bars on the terminal, one per stage."""

    def __init__(self, bar: RichBar):
        self.bar, self.task = bar, None

    def stage(self, name, total=None):
        if self.task is not None:
            self.bar.update(self.task, visible=False)
        self.task = self.bar.add_task(name, total=total)

    def advance(self, n=1):
        if self.task is not None:
            self.bar.advance(self.task, n)

    def note(self, message):
        self.bar.console.print(literal(message, "dim"))


def progress_bars(remaining: bool = False) -> RichBar:
    """The progress bars of a long verb: stage name, bar, done/total, time spent (and left)."""
    columns = [
        TextColumn("{task.description:<20}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    if remaining:
        columns.append(TimeRemainingColumn())
    return RichBar(*columns, console=console, transient=False)


def error(message) -> None:
    """One "error: ..." line, unwrapped (paths stay whole, the output can be grepped), shown exactly as
    written: brackets in paths and values are text, never markup."""
    err.print(join(("error: ", "red"), message), soft_wrap=True)


def print_problems(problems) -> None:
    for p in problems:
        error(p)
    err.print(f"{len(problems)} problem(s)")


def int_list(text: str, flag: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2]; anything else is a DataError naming the flag."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise DataError(f"{flag}: expected whole numbers separated by commas, got {text!r}") from None
    if any(v < 0 for v in values):
        raise DataError(f"{flag}: round numbers are >= 0, got {text!r}")
    return values


def float_list(text: str, flag: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise DataError(f"{flag}: expected numbers separated by commas, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise DataError(f"{flag}: expected finite numbers, got {text!r}")
    return values


def run_folder(path: str):
    """A run folder given on the command line: it must exist and hold config.toml."""

    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: no such run folder")
    if not p.is_dir() or not (p / "config.toml").is_file():
        raise DataError(f"{path}: not a run folder (no config.toml)")
    return p


def rounds_of(run_dir, text: str, flag: str, present) -> list[int]:
    """The rounds a verb works on: those named (each must be present), or all present ones."""
    if not text:
        return present
    rounds = int_list(text, flag)
    missing = [k for k in rounds if k not in present]
    if missing:
        raise DataError(
            f"{run_dir}: no round {', '.join(map(str, missing))} ({flag}; rounds here: "
            f"{', '.join(map(str, present)) or 'none'})"
        )
    return rounds


def model_ref(text: str) -> str:
    """A model given as a path, hub id or the embedded name, or as RUN_DIR:K for round K of a run."""

    run, sep, k = text.rpartition(":")
    if sep and k.isdigit() and (Path(run) / "config.toml").is_file():
        return round_model(run, int(k))
    return resolve_model(text)


EVALUATOR_HELP = (
    "a reward model (folder from `rlaif rm train`, or a shipped one: smollm2-135m-harmless) judges instead of "
    "the prompted judge"
)


def evaluator_overrides(evaluator: str | None) -> list[str]:
    """--evaluator as config overrides: the judge becomes that reward model."""

    if not evaluator:
        return []

    resolve_reward_model(evaluator, "--evaluator")  # a wrong name fails now, with the shipped names
    return ["judge.mode=reward", f"judge.reward_model={json.dumps(evaluator)}"]


DATA_HELP = {
    "train": "TRL-format preference JSONL or a datasets folder",
    "sft": "TRL SFT data: JSONL of prompt/completion or messages records, or a datasets folder",
}


def _number(kind, low, strict, what):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its message
    return parse


count = _number(int, 0, False, "a whole number >= 0")


positive = _number(int, 0, True, "a whole number >= 1")


finite = _number(float, -math.inf, False, "a finite number")


non_negative = _number(float, 0.0, False, "a finite number >= 0")
