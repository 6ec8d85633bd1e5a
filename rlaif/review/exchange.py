"""Labelling elsewhere: export a round's judged pairs for Label Studio or Argilla (or plain JSON Lines) with the
judge's verdict pre-filled, and import the team's labels back into round_<k>/human_labels.jsonl.

Label Studio (pairwise template): a JSON list of tasks, `data` = {pair_id, prompt, principle, text1, text2}
(text1 is the judge's x, text2 its y), the verdict as a prediction whose result is the Pairwise tag's
`{"type": "pairwise", "value": {"selected": "left" | "right"}}`; a Choices tag `tie` offers "neither". The
labelling config is written beside the tasks (`<file>.xml`). Label Studio's JSON export of the project comes
back with each task's `annotations` (the last one not cancelled is read).

Argilla (2.x records): `fields` {prompt, response1, response2}, `metadata` {pair_id, principle, round}, the verdict
as the `preference` question's suggestion (label "response1" | "response2" | "tie", score = the judge's
probability); records come back with `responses.preference` (the last submitted one is read). The flat form
of `records.to_list(flatten=True)` ("preference.responses") is read too.

JSON Lines: one record per pair ({pair_id, prompt, x, y, ai_choice, ai_p_chosen, label}); import reads records
with `pair_id` and `label` keep | flip | tie (a human_labels.jsonl from another reviewer is one).

    rlaif review runs/demo --round 1 --export r1.json --format label-studio
    rlaif review runs/demo --round 1 --import project-export.json --format label-studio
"""

from __future__ import annotations

import json
from pathlib import Path

from rlaif.data import DataError, read_jsonl_lines, write_atomic, write_jsonl
from rlaif.review.labels import LABELS, label_record

FORMATS = ("label-studio", "argilla", "jsonl")

LABEL_STUDIO_CONFIG = """<View>
  <Header value="Which response is better under the principle?"/>
  <Text name="principle" value="$principle"/>
  <Text name="prompt" value="$prompt"/>
  <Pairwise name="pw" toName="text1,text2"/>
  <View style="display: flex; gap: 1em;">
    <View style="flex: 1;"><Text name="text1" value="$text1"/></View>
    <View style="flex: 1;"><Text name="text2" value="$text2"/></View>
  </View>
  <Choices name="tie" toName="text1" choice="single">
    <Choice value="tie" hint="neither is better: the pair is dropped from training"/>
  </Choices>
</View>
"""

ARGILLA_SETTINGS = {
    "fields": [
        {"name": "prompt", "type": "text"},
        {"name": "response1", "type": "text"},
        {"name": "response2", "type": "text"},
    ],
    "questions": [
        {
            "name": "preference",
            "type": "label_selection",
            "labels": ["response1", "response2", "tie"],
            "description": "Which response is better under the principle (metadata.principle)? tie: neither.",
        }
    ],
    "metadata": [{"name": "principle", "type": "terms"}, {"name": "pair_id", "type": "terms"}],
}


def xy(pair: dict) -> tuple[str, str, str]:
    """The pair as the judge read it: (x, y, which the AI chose)."""
    if pair.get("chosen_is_x", True):
        return pair["chosen"], pair["rejected"], "x"
    return pair["rejected"], pair["chosen"], "y"


def label_from_choice(pair: dict, choice: str) -> str:
    """keep / flip / tie from a reviewer's choice of x, y or tie."""
    if choice == "tie":
        return "tie"
    return "keep" if choice == xy(pair)[2] else "flip"


def export_pairs(pairs: list[dict], labels: dict, out: str | Path, fmt: str) -> int:
    out = Path(out)
    if fmt not in FORMATS:
        raise DataError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if out.is_dir():
        raise DataError(f"{out}: is a folder; --export names a file")
    if fmt == "jsonl":
        rows = []
        for p in pairs:
            x, y, ai = xy(p)
            lab = labels.get(p["pair_id"])
            rows.append(
                {
                    "pair_id": p["pair_id"],
                    "principle": p.get("principle"),
                    "prompt": p["prompt"],
                    "x": x,
                    "y": y,
                    "ai_choice": ai,
                    "ai_p_chosen": p.get("p_chosen"),
                    "label": lab["label"] if lab else None,
                }
            )
        return write_jsonl(out, rows)
    if fmt == "label-studio":
        tasks = []
        for i, p in enumerate(pairs, 1):
            x, y, ai = xy(p)
            tasks.append(
                {
                    "id": i,
                    "data": {
                        "pair_id": p["pair_id"],
                        "principle": p.get("principle") or "",
                        "prompt": p["prompt"] if isinstance(p["prompt"], str) else json.dumps(p["prompt"]),
                        "text1": x,
                        "text2": y,
                    },
                    "predictions": [
                        {
                            "model_version": str(p.get("judged_by") or p.get("judge") or "judge"),
                            "score": p.get("p_chosen"),
                            "result": [
                                {
                                    "from_name": "pw",
                                    "to_name": "text1",
                                    "type": "pairwise",
                                    "value": {"selected": "left" if ai == "x" else "right"},
                                }
                            ],
                        }
                    ],
                }
            )
        write_atomic(out, lambda f: json.dump(tasks, f, ensure_ascii=False, indent=1))
        write_atomic(out.with_suffix(".xml"), lambda f: f.write(LABEL_STUDIO_CONFIG))
        return len(tasks)
    records = []
    for p in pairs:
        x, y, ai = xy(p)
        records.append(
            {
                "id": p["pair_id"],
                "fields": {
                    "prompt": p["prompt"] if isinstance(p["prompt"], str) else json.dumps(p["prompt"]),
                    "response1": x,
                    "response2": y,
                },
                "metadata": {
                    "pair_id": p["pair_id"],
                    "principle": p.get("principle"),
                    "round": p.get("round"),
                },
                "suggestions": {
                    "preference": {
                        "value": "response1" if ai == "x" else "response2",
                        "score": p.get("p_chosen"),
                        "agent": str(p.get("judged_by") or p.get("judge") or "judge"),
                    }
                },
            }
        )
    doc = {"settings": ARGILLA_SETTINGS, "records": records}
    write_atomic(out, lambda f: json.dump(doc, f, ensure_ascii=False, indent=1))
    return len(records)


def _read_json(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a JSON file ({e})") from None


def _label_studio_choices(path: Path) -> list[tuple[str, str, str, str]]:
    """(where, pair_id, choice x|y|tie, reviewer) of each annotated task of a Label Studio JSON export."""
    tasks = _read_json(path)
    if not isinstance(tasks, list):
        raise DataError(f"{path}: a Label Studio export is a JSON list of tasks")
    out = []
    for i, t in enumerate(tasks, 1):
        where = f"{path}: task {i}"
        if not isinstance(t, dict) or not isinstance(t.get("data"), dict):
            raise DataError(f'{where}: expected an object with "data"')
        pid = t["data"].get("pair_id")
        if not isinstance(pid, str):
            raise DataError(f'{where}: "data.pair_id" is missing (was this exported by rlaif review?)')
        annotations = [
            a for a in t.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")
        ]
        if not annotations:
            continue  # not labelled yet
        a = annotations[-1]
        choice = None
        for r in a.get("result") or []:
            v = r.get("value") or {}
            if r.get("type") == "choices" and "tie" in (v.get("choices") or []):
                choice = "tie"
                break
            if r.get("type") == "pairwise":
                sel = v.get("selected")
                if sel not in ("left", "right"):
                    raise DataError(f'{where}: pairwise "selected" must be "left" or "right", got {sel!r}')
                choice = "x" if sel == "left" else "y"
        if choice is None:
            continue  # an annotation without a choice (e.g. only a comment)
        who = a.get("completed_by")
        if isinstance(who, dict):
            who = who.get("email") or who.get("id")
        out.append((where, pid, choice, f"label-studio:{who}" if who is not None else "label-studio"))
    return out


def _argilla_choices(path: Path) -> list[tuple[str, str, str, str]]:
    doc = _read_json(path)
    records = doc.get("records") if isinstance(doc, dict) else doc
    if not isinstance(records, list):
        raise DataError(f'{path}: an Argilla export is a list of records (or an object with "records")')
    pick = {"response1": "x", "response2": "y", "tie": "tie"}
    out = []
    for i, r in enumerate(records, 1):
        where = f"{path}: record {i}"
        if not isinstance(r, dict):
            raise DataError(f"{where}: expected an object")
        pid = (r.get("metadata") or {}).get("pair_id") or r.get("pair_id") or r.get("id")
        if not isinstance(pid, str):
            raise DataError(f"{where}: no pair_id (metadata.pair_id or id)")
        responses = (r.get("responses") or {}).get("preference") or r.get("preference.responses") or []
        submitted = [
            x for x in responses if isinstance(x, dict) and x.get("status", "submitted") == "submitted"
        ]
        if not submitted:
            continue
        value = submitted[-1].get("value")
        if value not in pick:
            raise DataError(f"{where}: preference must be response1, response2 or tie, got {value!r}")
        who = submitted[-1].get("user_id")
        out.append((where, pid, pick[value], f"argilla:{who}" if who else "argilla"))
    return out


def _jsonl_labels(path: Path) -> list[tuple[str, str, str, str | None]]:
    out = []
    for lineno, r in read_jsonl_lines(path):
        where = f"{path}:{lineno}"
        if not isinstance(r.get("pair_id"), str):
            raise DataError(f'{where}: "pair_id" is missing')
        if r.get("label") is None:
            continue  # exported, not labelled
        if r["label"] not in LABELS:
            raise DataError(f'{where}: "label" must be one of {", ".join(LABELS)}, got {r["label"]!r}')
        out.append((where, r["pair_id"], r["label"], r.get("reviewer")))
    return out


def import_labels(path: str | Path, fmt: str, pairs: list[dict], reviewer: str) -> list[dict]:
    """Label records (see labels.py) from a labelling tool's export, for the round whose `pairs` are given.
    Every record is checked before any is returned: a bad one fails the whole import, naming it."""
    path = Path(path)
    if fmt not in FORMATS:
        raise DataError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    by_id = {p["pair_id"]: p for p in pairs}
    records = []
    if fmt == "jsonl":
        for where, pid, label, who in _jsonl_labels(path):
            if pid not in by_id:
                raise DataError(f"{where}: pair {pid!r} is not a judged pair of this round")
            records.append(label_record(by_id[pid], label, who or reviewer))
        return records
    choices = _label_studio_choices(path) if fmt == "label-studio" else _argilla_choices(path)
    for where, pid, choice, who in choices:
        if pid not in by_id:
            raise DataError(f"{where}: pair {pid!r} is not a judged pair of this round")
        records.append(label_record(by_id[pid], label_from_choice(by_id[pid], choice), who or reviewer))
    return records
