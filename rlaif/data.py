"""JSON Lines artefacts: atomic writes, strict reads with file:line errors, the prompt file format.

Every record a round writes carries `"schema": SCHEMA_VERSION`. A file is written to a temporary name in
the same folder and renamed into place, so a killed process leaves either the old file or the whole new
one, never a half-written file that looks complete.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

import jsonlines

SCHEMA_VERSION = 1


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class FolderBusy(RuntimeError):
    """Another process holds the lock (a run folder being run, a round being reviewed)."""


class FolderLock:
    """An exclusive flock on a lock file, taken without waiting. The kernel drops the lock when its process
    ends, however it ends, so a killed holder never leaves the folder stuck; the file only holds the holder's
    pid for the message. `busy` is the message's tail, with {holder} for that pid."""

    def __init__(self, path: str | Path, busy: str, error: type[Exception] = FolderBusy):
        self.path = Path(path)
        self.busy = busy
        self.error = error
        self.fd = None

    def __enter__(self):

        # never through a link (it would truncate the file it points to) and never blocking on a FIFO
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as e:
            what = {errno.ELOOP: "a symbolic link", errno.EISDIR: "a folder"}.get(e.errno)
            if what is None:
                raise  # permissions and the like: the caller's message says what to do
            raise DataError(
                f"{self.path}: is {what}, not rlaif's lock file; remove it and run again"
            ) from None
        if not stat.S_ISREG(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise DataError(
                f"{self.path}: is not a regular file (a FIFO or device?); remove it and run again"
            )
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise self.error(f"{self.path.parent}: " + self.busy.format(holder=holder)) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc):

        os.close(self.fd)  # closing the descriptor releases the flock


def clear(path: str | Path) -> None:
    """Remove whatever stands at `path` (a temp name or a target about to be replaced): a symbolic link is
    removed as the link itself, never followed, and a folder is removed only when it is a real one."""

    path = Path(path)
    if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def fresh_dir(path: str | Path) -> Path:
    """An empty folder at `path` for a write in progress: what stood there is cleared first (see `clear`), so
    a planted link at a temp name can never redirect the write."""
    path = Path(path)
    clear(path)
    path.mkdir(parents=True)
    return path


def real_dir(path: str | Path) -> Path:
    """The folder `path`, created if missing, where rlaif is about to write (a round folder, an output
    folder); refused when it is a symbolic link, which would carry the writes out of the run."""
    path = Path(path)
    if path.is_symlink():
        raise DataError(
            f"{path}: is a symbolic link (to {os.readlink(path)}); rlaif writes only inside the run folder "
            "and does not follow links there: remove the link and run again"
        )
    if os.path.lexists(path) and not path.is_dir():
        raise DataError(f"{path}: is not a folder; remove it and run again")
    path.mkdir(parents=True, exist_ok=True)
    return path


def create_file(path: str | Path, mode: str = "w"):
    """Open a new file at `path` for writing (a log): what stood there is cleared, then the file is created
    exclusively, so a link planted at the name is replaced, never written through."""
    path = Path(path)
    clear(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    return os.fdopen(fd, mode)


def temp_name(path: str | Path) -> Path:
    """A new, empty, unpredictable temp file next to `path` (for writers that open by name: safetensors,
    matplotlib); rename it over `path` when done."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return Path(tmp)


def write_atomic(path: str | Path, write) -> None:
    """Call `write(file_object)` on a temp file next to `path`, fsync it, then rename it over `path`. The file
    gets the permissions a plain open() would give it (0666 less the umask), not the temp file's 0600. The temp
    file is created exclusively and the rename replaces a link at `path` rather than following it."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise DataError(f"{path}: is a folder where rlaif writes a file; remove it and run again")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(tmp: str | Path, target: str | Path) -> None:
    """Move a finished temp folder into place: the old folder is renamed aside first and removed after, so a
    kill leaves the old folder or the new one whole (never a mix). A link standing at `target` is removed
    as the link, never followed."""
    tmp, target = Path(tmp), Path(target)
    old = target.with_name(target.name + ".old")
    clear(old)
    if os.path.lexists(target):
        os.replace(target, old)
    os.replace(tmp, target)
    clear(old)


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
    return [r for _, r in read_jsonl_lines(path)]


def read_jsonl_lines(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) of every non-blank line of a JSON Lines file; errors name the file and line."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; a JSON Lines file is expected here")
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise DataError(
            f"{path}: not a regular file (a FIFO, socket or device); a JSON Lines file is expected"
        )
    records = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {e.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            if "\\u" in line and (where := _lone_surrogate(obj)):
                raise DataError(
                    f"{path}:{lineno}: {where} holds a lone surrogate escape (such as \\ud800), which is not "
                    "a character; fix or remove that escape"
                )
            records.append((lineno, obj))
    return records


def _lone_surrogate(obj, where: str = "") -> str | None:
    """Where in a parsed JSON value a string holds a lone surrogate (JSON's "\\ud800" parses to one, and no
    tokenizer or terminal can encode it), as `key.key[i]`; None when there is none."""
    if isinstance(obj, str):
        return (where or "the value") if any("\ud800" <= c <= "\udfff" for c in obj) else None
    if isinstance(obj, dict):
        items = ((f"{where}.{k}" if where else repr(k)[1:-1], v) for k, v in obj.items())
    elif isinstance(obj, list):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for w, v in items:
        if found := _lone_surrogate(v, w):
            return found
    return None


def read_json_file(path: str | Path) -> dict | None:
    """A JSON object file the run wrote (metrics.json, stages.json, manifest.json), or None when absent. A
    damaged one is named, with the repair: delete it and run the command again (its stage reruns)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(
            f"{path}: damaged ({type(e).__name__}: {e}); delete it and run the same command again "
            "(the stage that writes it reruns)"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: damaged (not a JSON object); delete it and run the same command again")
    return obj


def load_prompts(path: str | Path) -> list[dict]:
    """Prompt file: one {"prompt": str, ...} per line; other keys (id, kind) are kept.

    A record without an "id" gets its line order as id, so outputs can always be joined back to prompts.
    """
    records = read_jsonl_lines(path)
    if not records:
        raise DataError(f"{path}: no prompts (the file is empty)")
    prompts, seen = [], set()
    for i, (lineno, r) in enumerate(records):
        p = r.get("prompt")
        if not isinstance(p, str) or not p.strip():
            raise DataError(f'{path}:{lineno}: "prompt" must be a non-empty string, got {p!r:.60}')
        pid = str(r.get("id", i))
        if pid in seen:
            raise DataError(f"{path}:{lineno}: duplicate id {pid!r}")
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
    out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if isinstance(r.get("principle"), str):  # a run's judged pairs carry the principle they were judged under
        out["principle"] = r["principle"]
    return out


def _messages(value, where: str) -> list[dict]:
    if not (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value
        )
    ):
        raise DataError(f"{where}: must be chat messages, each with a string role and content")
    return value


def sft_record(r: dict, where: str) -> dict:
    """One TRL SFT example as {"prompt", "completion", "finished"}: the prompt a string or chat messages, the
    completion a string. Accepts prompt/completion (strings, or messages with the completion a one-message
    assistant list) and messages (a conversation; its last message, the assistant's, is the completion and
    everything before it the prompt). An optional boolean "finished" (false: the completion was cut by a
    length limit) keeps the EOS token off."""
    if not isinstance(r, dict):
        raise DataError(f"{where}: expected an object with prompt/completion or messages")
    finished = r.get("finished", True)
    if not isinstance(finished, bool):
        raise DataError(f'{where}: "finished" must be true or false')
    if "messages" in r:
        msgs = _messages(r["messages"], f'{where}: "messages"')
        if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
            raise DataError(f'{where}: "messages" must end with an assistant message after the prompt')
        prompt, completion = msgs[:-1], msgs[-1]["content"]
    elif "prompt" in r and "completion" in r:
        prompt, completion = r["prompt"], r["completion"]
        if isinstance(prompt, list):
            prompt = _messages(prompt, f'{where}: "prompt"')
        elif not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f'{where}: "prompt" must be a non-empty string or chat messages')
        if isinstance(completion, list):
            msgs = _messages(completion, f'{where}: "completion"')
            if len(msgs) != 1 or msgs[0]["role"] != "assistant":
                raise DataError(f'{where}: "completion" messages must be one assistant message')
            completion = msgs[0]["content"]
    else:
        raise DataError(
            f'{where}: expected "prompt" and "completion", or "messages" (the TRL SFT formats), got keys '
            f"{', '.join(map(repr, r)) or 'none'}"
        )
    if not isinstance(completion, str) or not completion.strip():
        raise DataError(f"{where}: the completion must be a non-empty string")
    if isinstance(prompt, list) and len(prompt) == 1 and prompt[0]["role"] == "user":
        prompt = prompt[0]["content"]  # a single user turn: the same as the standard format
    return {"prompt": prompt, "completion": completion, "finished": finished}


def _load_records(source: str, base: Path | None, split: str, parse, what: str) -> list[dict]:
    """Records from a JSONL file, a `datasets` folder (save_to_disk) or a Hugging Face dataset name (hub or
    cache), each through `parse(record, where)`. Relative paths are relative to `base`."""
    path = Path(source) if base is None or Path(source).is_absolute() else Path(base) / source
    if path.suffix in (".jsonl", ".json") or path.is_file():
        # a reviewer's tie (rlaif review's human_labels.jsonl) says neither response is better: no pair
        out = [parse(r, f"{path}:{lineno}") for lineno, r in read_jsonl_lines(path) if not is_tie_record(r)]
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
        out = [parse(r, f"{source}: row {i}") for i, r in enumerate(ds, 1)]
    if not out:
        raise DataError(f"{source}: no {what}")
    return out


def is_tie_record(r: dict) -> bool:
    """A record of a reviewer's labels file (rlaif/review/labels.py) saying neither response is better."""
    return r.get("label") == "tie" and "pair_id" in r


def load_preferences(source: str, base: Path | None = None, split: str = "train") -> list[dict]:
    """Preference pairs from a TRL-format JSONL file, a `datasets` folder (save_to_disk) or a Hugging Face
    dataset name (hub or cache). Relative paths are relative to `base`. Errors name the source and record."""
    return _load_records(source, base, split, preference_record, "preference pairs")


def unpaired_record(r: dict, where: str) -> dict:
    """One TRL unpaired example (KTO's format) as {"prompt", "completion", "label"}: the prompt a string or chat
    messages, the completion a string (or a one-message assistant list), the label true (desirable) or false."""
    if not isinstance(r, dict):
        raise DataError(f"{where}: expected an object with prompt/completion/label")
    if not isinstance(r.get("label"), bool):
        raise DataError(
            f'{where}: "label" must be true (desirable) or false (undesirable), got {r.get("label")!r}'
        )
    out = sft_record({"prompt": r.get("prompt"), "completion": r.get("completion")}, where)
    return {"prompt": out["prompt"], "completion": out["completion"], "label": r["label"]}


def feedback_record(r: dict, where: str) -> dict:
    """A preference pair (prompt/chosen/rejected) or an unpaired example (prompt/completion/label), whichever
    the record is; an unpaired one carries `"unpaired": True`."""
    if isinstance(r, dict) and "completion" in r and "label" in r and "chosen" not in r:
        return {**unpaired_record(r, where), "unpaired": True}
    return preference_record(r, where)


def load_feedback(source: str, base: Path | None = None, split: str = "train") -> list[dict]:
    """Preference pairs and unpaired (KTO) examples from the same kinds of source as `load_preferences`."""
    return _load_records(source, base, split, feedback_record, "preference pairs or unpaired examples")


def unpair(pairs: list[dict]) -> list[dict]:
    """Preference pairs as unpaired examples (pure): each chosen response desirable, each rejected one not (as
    TRL's unpair_preference_dataset does). Other keys of a pair ride along."""
    out = []
    for p in pairs:
        rest = {
            k: v
            for k, v in p.items()
            if k not in ("chosen", "rejected", "chosen_finished", "rejected_finished")
        }
        out.append(
            {**rest, "completion": p["chosen"], "finished": p.get("chosen_finished", True), "label": True}
        )
        out.append(
            {
                **rest,
                "completion": p["rejected"],
                "finished": p.get("rejected_finished", True),
                "label": False,
            }
        )
    return out


def load_sft(source: str, base: Path | None = None, split: str = "train") -> list[dict]:
    """SFT examples (TRL prompt/completion or messages format) from the same kinds of source."""
    return _load_records(source, base, split, sft_record, "SFT examples")


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


EXPORT_MARK = "rlaif-export.json"
"""The file a `datasets` export folder carries, so that `--force` can tell a previous export from anything else."""


def _previous_jsonl_export(path: Path) -> bool:
    try:
        records = read_jsonl(path)
    except DataError:
        return False
    return all(set(r) == {"prompt", "chosen", "rejected"} for r in records)


def export_preferences(
    pairs: list[dict], out: str | Path, fmt: str = "jsonl", conversational: bool = False, force: bool = False
) -> int:
    """Write pairs in the TRL format as JSONL (atomic) or as a `datasets` folder (save_to_disk). Never replaces
    what this command did not make: an existing target is refused, and `force` replaces only a previous export
    (a JSONL file of TRL records, or a folder carrying EXPORT_MARK)."""

    out = Path(out)
    rows = [to_trl(p, conversational) for p in pairs]
    if fmt == "jsonl":
        if out.is_dir():
            raise DataError(
                f"{out}: is a folder; --format jsonl writes a file (e.g. --out {out / 'prefs.jsonl'})"
            )
        if out.exists() and out.stat().st_size > 0:
            if not force:
                raise DataError(
                    f"{out}: already exists; not overwritten (--force replaces a previous export)"
                )
            if not _previous_jsonl_export(out):
                raise DataError(
                    f"{out}: exists and is not a previous rlaif export; not replaced, even with --force"
                )
        return write_jsonl(out, rows)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: is a file; --format hf writes a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise DataError(
                f"{out}: already exists and is not empty; not replaced (--force replaces a previous export)"
            )
        if not (out / EXPORT_MARK).is_file():
            raise DataError(
                f"{out}: not a previous rlaif export (no {EXPORT_MARK}); not replaced, even with --force"
            )
    import datasets

    tmp = out.with_name(f".{out.name}.tmp")
    clear(tmp)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp))
    (tmp / EXPORT_MARK).write_text(json.dumps({"pairs": len(rows), "conversational": conversational}))
    replace_dir(tmp, out)
    return len(rows)


def portable(path: str, run_dir: str | Path) -> str:
    """A model path as a run stores it: relative to the run folder when it lies inside it (so a moved or
    copied run folder uses its own models), else as given (the initial model, a hub id)."""
    try:
        return str(Path(path).resolve().relative_to(Path(run_dir).resolve()))
    except (ValueError, OSError):
        return path


def resolve(path: str, run_dir: str | Path) -> str:
    """A stored model path as a usable one: relative paths are inside the run folder."""
    p = Path(path)
    if p.is_absolute() or not (Path(run_dir) / p).exists():
        return path  # absolute, or a hub id / embedded name
    return str((Path(run_dir) / p).resolve())
