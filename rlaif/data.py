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


# -- preference data in the TRL format: import and export --------------------------------------------------


def _response_text(value, where: str):
    """A TRL response: a string, or chat messages whose last one is the assistant's reply."""
    if isinstance(value, str):
        return value, None
    if (
        isinstance(value, list)
        and value
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value)
        and value[-1].get("role") == "assistant"
    ):
        return value[-1]["content"], value[:-1]
    raise DataError(f"{where}: must be a string or chat messages ending with an assistant message")


def preference_record(r: dict, where: str) -> dict:
    """One TRL preference example as {"prompt", "chosen", "rejected"} with response strings and a prompt that is
    a string or chat messages. Accepts the standard format (strings), the conversational one (messages), and the
    implicit-prompt one (no "prompt": chosen and rejected are whole conversations sharing it)."""
    if not isinstance(r, dict):
        raise DataError(f"{where}: expected an object with prompt/chosen/rejected")
    for key in ("chosen", "rejected"):
        if key not in r:
            raise DataError(f'{where}: missing "{key}"')
    chosen, c_ctx = _response_text(r["chosen"], f'{where}: "chosen"')
    rejected, r_ctx = _response_text(r["rejected"], f'{where}: "rejected"')
    prompt = r.get("prompt")
    if prompt is None:
        if not c_ctx or c_ctx != r_ctx:
            raise DataError(
                f'{where}: no "prompt", and chosen/rejected do not share a conversation before the reply'
            )
        prompt = c_ctx
    elif isinstance(prompt, list):
        if not prompt or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt
        ):
            raise DataError(f'{where}: "prompt" messages must each have a string role and content')
        if c_ctx:  # messages after the prompt and before the reply belong to the prompt
            prompt = prompt + c_ctx
    elif not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f'{where}: "prompt" must be a non-empty string or chat messages')
    if isinstance(prompt, list) and len(prompt) == 1 and prompt[0]["role"] == "user":
        prompt = prompt[0]["content"]  # a single user turn: the same as the standard format
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def load_preferences(source: str, base: Path | None = None, split: str = "train") -> list[dict]:
    """Preference pairs from a TRL-format JSONL file, a `datasets` folder (save_to_disk) or a Hugging Face
    dataset name (hub or cache). Relative paths are relative to `base`. Errors name the source and record."""
    path = Path(source) if base is None or Path(source).is_absolute() else Path(base) / source
    if path.suffix in (".jsonl", ".json") or path.is_file():
        records = read_jsonl(path)
        out = [preference_record(r, f"{path}:{i}") for i, r in enumerate(records, 1)]
    else:
        try:
            import datasets
        except ImportError:
            raise DataError(
                f"{source}: reading a Hugging Face dataset needs `pip install datasets`"
            ) from None
        try:
            if path.is_dir():
                ds = datasets.load_from_disk(str(path))
                if isinstance(ds, datasets.DatasetDict):
                    ds = ds[split]
            else:
                ds = datasets.load_dataset(source, split=split)
        except Exception as e:  # noqa: BLE001 - datasets raises many types; the user needs the source named
            raise DataError(f"{source}: could not load as a dataset ({type(e).__name__}: {e})") from None
        out = [preference_record(r, f"{source}: row {i}") for i, r in enumerate(ds, 1)]
    if not out:
        raise DataError(f"{source}: no preference pairs")
    return out


def to_trl(pair: dict, conversational: bool = False) -> dict:
    """A preference pair in TRL's format: standard strings, or conversational messages."""
    if not conversational:
        prompt = pair["prompt"]
        if isinstance(prompt, list):  # standard format has no roles: keep the messages (TRL accepts both)
            return {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": pair["chosen"]}],
                "rejected": [{"role": "assistant", "content": pair["rejected"]}],
            }
        return {"prompt": prompt, "chosen": pair["chosen"], "rejected": pair["rejected"]}
    prompt = (
        pair["prompt"] if isinstance(pair["prompt"], list) else [{"role": "user", "content": pair["prompt"]}]
    )
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": pair["chosen"]}],
        "rejected": [{"role": "assistant", "content": pair["rejected"]}],
    }


def export_preferences(
    pairs: list[dict], out: str | Path, fmt: str = "jsonl", conversational: bool = False
) -> int:
    """Write pairs in the TRL format as JSONL (atomic) or as a `datasets` folder (save_to_disk)."""
    rows = [to_trl(p, conversational) for p in pairs]
    if fmt == "jsonl":
        return write_jsonl(out, rows)
    import datasets

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return len(rows)
