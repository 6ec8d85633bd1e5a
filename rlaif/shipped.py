"""Where the files rlaif ships as data live: the principles, the constitutions (with their prompt templates),
the held-out eval sets and the demo run (config and prompts), which `rlaif init` copies into a new run folder.

The top-level folders of the source tree (principles/, constitution/, evals/, runs/demo/) are the editable
originals. A wheel carries copies of them inside the package, under rlaif/_shipped/ (pyproject.toml maps
them there), read through importlib.resources; an editable install or a source checkout reads the originals.

    rlaif init my-run && rlaif run my-run --rounds 2
"""

from __future__ import annotations

import os
import shutil
from importlib.resources import files
from pathlib import Path

from rlaif.data import DataError, fresh_dir, replace_dir

FOLDERS = {
    "principles": "principles",
    "constitution": "constitution",
    "evals": "evals",
    "demo": "runs/demo",
}
"""Each shipped folder by name, and where its original lives in the source tree."""


def shipped(name: str) -> Path:
    """The folder of shipped data called `name` (a key of FOLDERS): inside the installed package when it is
    there (a wheel install), else the source tree's original (a checkout, an editable install)."""
    package = Path(str(files("rlaif")))
    inside = package / "_shipped" / name
    return inside if inside.is_dir() else package.parent / FOLDERS[name]


INIT_HEADER = """\
# Made by `rlaif init`: the demo's settings (2 rounds on the embedded default model fit a 2-core CPU).
# The judge reads the constitution and principles in this folder: constitution/default.toml says which
# principles judge and how often, principles/*.toml what each asks. Edit them, or add your own; check them with
#   rlaif principles check constitution/default.toml
# then run `rlaif run <this folder> --rounds 2`. Every key not set here has a default (README, "Config keys").
"""


def init_run(folder: str | Path) -> Path:
    """Scaffold a run folder: the demo's config.toml, prompts.jsonl and offline pairs, and editable copies of the shipped
    constitutions (with their templates) and principles, which the config points at, so a user edits their own
    principles without touching the package. An existing non-empty folder is refused, and so is a link (the
    folder is built under a temp name beside it and renamed into place)."""

    target = Path(folder)
    if target.is_symlink() or (os.path.lexists(target) and not target.is_dir()):
        raise DataError(f"{target}: exists and is not a folder; rlaif init makes a new run folder")
    if target.is_dir() and any(target.iterdir()):
        raise DataError(f"{target}: not empty; rlaif init makes a new run folder (give a new name)")
    tmp = fresh_dir(target.with_name(target.name + ".init.tmp"))
    config = (shipped("demo") / "config.toml").read_text(encoding="utf-8")
    old = 'constitution = "default"'
    if old not in config:  # the demo config and this function change together
        raise AssertionError("the shipped demo config names no default constitution")
    config = config.replace(
        old, 'constitution = "constitution/default.toml"   # your copy, in this folder', 1
    )
    (tmp / "config.toml").write_text(INIT_HEADER + config, encoding="utf-8")
    for name in ("prompts.jsonl", "helpful-pairs.jsonl"):  # the prompts, and the offline pairs it trains on
        shutil.copyfile(shipped("demo") / name, tmp / name)
    shutil.copytree(shipped("constitution"), tmp / "constitution", ignore=shutil.ignore_patterns("__*"))
    shutil.copytree(shipped("principles"), tmp / "principles", ignore=shutil.ignore_patterns("__*"))
    if target.is_dir():
        target.rmdir()  # empty (checked above)
    replace_dir(tmp, target)
    return target
