"""The run manifest, `runs/<name>/manifest.json`: what a run was made with (the first invocation's resolved
config, seed, prompt file, constitution and principle files, package versions, device, the initial model and
its hash) and the model of every completed round, with each later invocation's overrides, config changes and
rounds appended as history. Written by rlaif/rounds.py after each completed round.
"""

from __future__ import annotations

import platform
import time
from importlib import metadata

from rlaif.config import to_dict
from rlaif.data import write_json
from rlaif.layout import portable, read_json
from rlaif.models import model_hash


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("rlaif", "torch", "transformers", "peft", "jsonlines", "rich"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _changes(first: dict, now: dict, prefix: str = "") -> dict:
    """Dotted keys whose value differs between two resolved configs, with the new value."""
    out = {}
    for key, value in now.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(first.get(key), dict):
            out.update(_changes(first[key], value, dotted + "."))
        elif first.get(key) != value:
            out[dotted] = value
    return out


def write_manifest(run, rounds: list[dict], overrides: list[str], ran: list[int]) -> None:
    """The run's manifest: the first invocation's resolved config, seed, files, versions and models, kept as
    they were; each invocation that completes rounds appends its overrides, config changes and rounds to
    `history`. An invocation that completed nothing leaves the file untouched."""
    path = run.dir / "manifest.json"
    manifest = read_json(path)
    if manifest is not None and not ran:
        return
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    config = to_dict(run.config)
    if manifest is None:
        manifest = {
            "created": now,
            "config": config,
            "seed": run.config.seed,
            "prompts": portable(str(run.prompts_path), run.dir),
            "constitution": portable(run.constitution.path, run.dir),
            "principles": {p.id: portable(p.path, run.dir) for p in run.constitution.principles},
            "critique_examples": portable(run.constitution.examples_path, run.dir),
            "versions": _versions(),
            "device": run.device,
            "initial_model": {"path": run.initial, "hash": model_hash(run.initial)},
            "history": [],
        }
    manifest["updated"] = now
    history = manifest.setdefault("history", [])
    entry = {
        "time": now,
        "overrides": list(overrides),
        "config_changes": _changes(manifest["config"], config),
    }
    if len(ran) > 1 and history:
        history[-1]["rounds"] = ran  # this invocation completed one more round
    else:
        history.append({**entry, "rounds": ran})
    manifest["rounds"] = {
        **manifest.get("rounds", {}),
        **{str(m["round"]): {"model": m["model"]["path"], "hash": m["model"]["hash"]} for m in rounds},
    }
    write_json(path, manifest)
