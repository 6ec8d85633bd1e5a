"""`rlaif principles check`: every principle, constitution and template file parsed, with each problem named by file
and key, and each principle held to the requests its kind must cover."""

from __future__ import annotations

from pathlib import Path

from rlaif.principles import (
    CONSTITUTION_DIR,
    PRINCIPLES_DIR,
    Principle,
    Problem,
    parse_constitution,
    parse_principle,
    read_toml,
)


def missing_requests(principles, problems: list[Problem]) -> None:
    """The critique stage asks every principle for its critique and revision requests."""
    for p in principles:
        for key in ("critique", "revision"):
            if not getattr(p, key):
                problems.append(
                    Problem(p.path, key, "missing: the critique stage asks it of every principle")
                )


def _held_to(p: Principle, mode: str, critique: bool, problems: list[Problem]) -> None:
    """What a principle needs beyond its own file's rules: `check` for the pointwise judge, the critique stage's
    requests."""
    if critique:
        missing_requests([p], problems)
    if mode == "pointwise" and not p.check:
        problems.append(
            Problem(p.path, "check", "missing: judge.mode = 'pointwise' asks it of every principle")
        )


def check_all(
    principles_dir: Path = PRINCIPLES_DIR,
    constitution_dir: Path = CONSTITUTION_DIR,
    mode: str = "pointwise",
    critique: bool = True,
) -> list[Problem]:
    """Validate every principle file and every constitution; returns all problems found. `mode` is the judge
    mode the principles must serve: pointwise judging (the default) needs every principle's `check`;
    `critique` (the default) asks every principle for its critique and revision requests."""
    return check_paths([principles_dir, constitution_dir], mode, critique)


def check_paths(paths, mode: str = "pointwise", critique: bool = True) -> list[Problem]:
    """Validate files: each path is a constitution (a TOML file with a `principles` table: checked with every
    principle it names), a principle file, or a folder of either. Every principle is held to `mode` and
    `critique` (see `check_all`)."""
    problems: list[Problem] = []
    principles: list[Principle] = []
    files: list[Path] = []
    for path in (
        Path(x).resolve() for x in paths
    ):  # resolved as a constitution's principles are: one of each
        if path.is_dir():
            found = sorted(path.glob("*.toml"))
            if not found:
                problems.append(Problem(str(path), "folder", "no .toml files"))
            files += found
        else:
            files.append(path)
    seen: dict[str, str] = {}
    for path in files:
        raw = read_toml(path, problems)
        if raw is None:
            continue
        if "principles" in raw:
            c = parse_constitution(path, problems)
            principles += c.principles if c else []
            continue
        p = parse_principle(path, problems)
        if p is not None:
            if seen.setdefault(p.id, str(path)) != str(path):
                problems.append(Problem(str(path), "id", f"{p.id!r} is also used by {seen[p.id]}"))
            principles.append(p)
    for p in dict.fromkeys(principles):
        _held_to(p, mode, critique, problems)
    # a principle that fails in its own file is also reported through each constitution: keep one of each
    return list(dict.fromkeys(problems))
