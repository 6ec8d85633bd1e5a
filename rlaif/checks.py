"""Config validation helpers shared by every config dataclass (the run's and each stage's): a ConfigError
names the dotted key, and the loader adds the file.

    python -c "from rlaif.checks import check; check(1 > 2, 'train.beta', 'must be > 0')"
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path


class ConfigError(ValueError):
    """A bad configuration value. `key` is dotted (`dpo.beta`); `file` is filled in by the loader."""

    def __init__(self, key: str, message: str, file: str | Path | None = None):
        self.key, self.message, self.file = key, message, file
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.key}: {self.message}"


def check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(key, message)


def principle_keys(constitution, section: str, keys) -> None:
    """Every key of a table keyed by principle (`dpo.principle_weights`, `judge.missing_eos_penalties`) names a
    principle id or kind of the constitution: checked before the first stage."""

    names = {p.id for p in constitution.principles} | {p.kind for p in constitution.principles}
    for key in keys:
        if key not in names:
            raise ConfigError(
                f"{section}.{key}",
                f"names no principle or principle kind of the constitution {constitution.name!r} (it has: "
                f"{', '.join(sorted(names))})",
            )


def one_of(value: str, choices: tuple[str, ...], key: str) -> None:
    check(value in choices, key, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def finite_numbers(config, section: str) -> None:
    """Every float field of a config dataclass is a finite number (inf and nan train broken models)."""

    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{section}.{f.name}", f"must be a finite number, got {value}")
