"""The stages of a round, one module each, run in the order `round.stages` gives (rlaif/rounds.py schedules).

Every stage module has the same few names, and nothing else is needed to add one:

    PRODUCES_MODEL         True when the stage's "model" figure is a new model: the round's model from then on
    LOWER_ON_OOM           the config keys to lower when the stage runs out of memory (named in the message)
    outputs(figures)       the files and folders in the round folder the stage wrote, given its figures: the
                           runner counts the stage complete when its figures are in stages.json and these exist
    validate(run)          checks run before the first stage of the first round (bad input fails early)
    run(round) -> figures  does the work, reading earlier stages' files from the round folder, and returns
                           its figures

A stage's config dataclass lives in rlaif/config/<stage>.py (the bottom layer, which imports nothing but the
checks) and is imported by the stage's module under the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rlaif.config import STAGE_NAMES, RunConfig
from rlaif.progress import Progress

if TYPE_CHECKING:  # annotations only: the pool loads models
    from rlaif.pool import ModelPool
    from rlaif.principles import Constitution

NAMES = STAGE_NAMES
"""Every stage a round can run (modules of this package)."""


class Paused(Exception):  # noqa: N818 - a pause, not an error: the message says how to continue
    """A stage asks the run to stop here on purpose (the review stage waits for people); the next
    `rlaif run` resumes at that stage."""


@dataclass
class Run:
    """What every round of a run shares."""

    dir: Path
    config: RunConfig
    initial: str
    """The run's first model (round 0)."""
    pool: ModelPool
    """The models and the vLLM engine stages borrow."""
    progress: Progress
    constitution: Constitution
    prompts: list[dict]
    prompts_path: Path
    device: str
    cache: dict = field(default_factory=dict)
    """Run-wide values a stage computes once (e.g. offline preference pairs)."""
    loaded: dict = field(default_factory=dict)
    """What remote servers hold now (the openai backends): loading the same model twice is skipped."""
    overrides: list[str] = field(default_factory=list)
    """The command line's `--set` overrides (launched training processes load the same config)."""


@dataclass
class Round:
    """One round, as its stages see it."""

    run: Run
    k: int
    dir: Path
    parent: str
    """The model the round starts from: the previous round's model (round 1: the initial model)."""
    model: str
    """The round's model so far: the parent, until a stage produces a new one."""

    @property
    def config(self) -> RunConfig:
        return self.run.config

    @property
    def pool(self) -> ModelPool:
        return self.run.pool

    @property
    def progress(self) -> Progress:
        return self.run.progress

    @property
    def seed(self) -> int:
        return self.run.config.seed
