"""JSON Lines artefacts: atomic writes, strict reads with file:line errors, the prompt file format.

Every record a round writes carries `"schema": SCHEMA_VERSION`. A file is written to a temporary name in
the same folder and renamed into place, so a killed process leaves either the old file or the whole new
one, never a half-written file that looks complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import jsonlines

SCHEMA_VERSION = 1


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


def write_atomic(path: str | Path, write) -> None:
    """Call `write(file_object)` on a temp file next to `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write records atomically as JSON Lines; returns how many were written."""
    count = 0

    def write(f):
        nonlocal count
        with jsonlines.Writer(f, compact=True, sort_keys=False) as w:
            for record in records:
                w.write(record)
                count += 1

    write_atomic(path, write)
    return count


def write_json(path: str | Path, obj) -> None:
    write_atomic(path, lambda f: json.dump(obj, f, indent=2, sort_keys=False, default=str))


def read_jsonl(path: str | Path) -> list[dict]:
    """Read JSON Lines; every line must be a JSON object. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    records = []
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                records.append(obj)
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text") from None
    return records


def load_prompts(path: str | Path) -> list[dict]:
    """Prompt file: one {"prompt": str, ...} per line; other keys (id, kind) are kept.

    A record without an "id" gets its line order as id, so outputs can always be joined back to prompts.
    """
    records = read_jsonl(path)
    if not records:
        raise DataError(f"{path}: no prompts (the file is empty)")
    prompts, seen = [], set()
    for i, r in enumerate(records):
        p = r.get("prompt")
        if not isinstance(p, str) or not p.strip():
            raise DataError(f'{path}: record {i + 1}: "prompt" must be a non-empty string, got {p!r:.60}')
        pid = str(r.get("id", i))
        if pid in seen:
            raise DataError(f"{path}: record {i + 1}: duplicate id {pid!r}")
        seen.add(pid)
        prompts.append({**r, "id": pid, "prompt": p})
    return prompts
