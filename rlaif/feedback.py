"""Learning from how people use a model: a log of interactions turned into training data.

The log (`rlaif feedback import LOG --run RUN`) is JSON Lines, one interaction per line:

    {"id": "a17",                          # optional; needed only to link a regeneration to what it replaced
     "conversation": "How do I ...?",      # the prompt: a string, or chat messages before the response
     "response": "You can ...",            # what the model answered
     # any of these signals (absent = unknown):
     "thumbs": "up" | "down",              # or 1 / -1
     "likes": 12, "dislikes": 1,           # counts (a reader population), or true / false for one user
     "views": 340, "clicks": 51,           # counts
     "dwell_seconds": 41.5,
     "copied": true,                       # the user copied the answer
     "regenerated": true,                  # the user asked for another answer instead of this one
     "regenerated_from": "a16",            # this answer replaced the answer with that id
     "edited_to": "You can ... instead.",  # the user's own correction of the answer
     "rephrased": true,                    # the user's next message rephrased the request (it was not answered)
     "user": "u-381"}                      # optional: who (the privacy unit of DP training)

It becomes, in RUN/feedback/:

- kto.jsonl: unpaired examples (prompt, completion, label) by the rule in `FeedbackRule` (desirable: thumbs up,
  copied, more likes than dislikes; undesirable: thumbs down, regenerated, rephrased, more dislikes than likes;
  conflicting signals: left out), for `dpo.loss = "kto"` through `data.offline`;
- pairs.jsonl: the preference pairs the log implies: an answer loses to the answer that replaced it
  (regenerated_from, when the replacement was not itself regenerated) and to the user's edit of it (edited_to);
- rlhb-prompts.jsonl: each distinct query once, asking for the desired behaviour (`rlhb.desired`): the RLHB
  generator's prompt file (`data.prompts`);
- behaviour.jsonl: each interaction's behaviour as text, RLHB's conditioning ("Many readers viewed it, some
  clicked through, a few liked it, no one disliked it."): counts smoothed by log(1 + x) and binned (`behaviour_text`),
  with the counts kept beside it.

Every line is checked before anything is written: bad lines are named with their line numbers and nothing is
imported; the three files are then written atomically.

`simulate_log` builds a log from preference pairs (for this project's own measurements: no public behaviour log
exists on this machine); the importer never depends on it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from rlaif.config.rlhb import DESIRED
from rlaif.data import DataError, read_jsonl_lines, write_jsonl
from rlaif.rlhb import generator_prompt, last_user_turn

COUNTS = ("views", "clicks", "likes", "dislikes")
FLAGS = ("copied", "regenerated", "rephrased")
BINS = ((0.0, "no one"), (1.0, "a few"), (2.5, "some"), (4.0, "many"))
"""log(1 + count) thresholds and their words: below 1 (0 or 1) no one, [1, 2.5) a few (2-11), [2.5, 4) some
(11-54), 4 and up (54+) many."""


class FeedbackError(DataError):
    """Bad lines in a behaviour log; the message names every one (up to 20)."""


@dataclass
class FeedbackRule:
    """Which signals make a response desirable or undesirable for KTO (a signal absent from a record is
    unknown, not negative). A record with signals on both sides is left out."""

    desirable: list[str] = field(default_factory=lambda: ["thumbs_up", "copied", "liked"])
    undesirable: list[str] = field(
        default_factory=lambda: ["thumbs_down", "regenerated", "rephrased", "disliked"]
    )


SIGNALS = ("thumbs_up", "thumbs_down", "copied", "regenerated", "rephrased", "liked", "disliked", "edited")


def signals(r: dict) -> set[str]:
    """The named signals a (checked) record carries."""
    out = set()
    t = r.get("thumbs")
    if t in ("up", 1, True):
        out.add("thumbs_up")
    elif t in ("down", -1, False):
        out.add("thumbs_down")
    for flag in FLAGS:
        if r.get(flag) is True:
            out.add(flag)
    likes, dislikes = _count(r.get("likes")), _count(r.get("dislikes"))
    if likes > dislikes:
        out.add("liked")
    elif dislikes > likes:
        out.add("disliked")
    if isinstance(r.get("edited_to"), str) and r["edited_to"].strip() and r["edited_to"] != r["response"]:
        out.add("edited")
    return out


def _count(v) -> float:
    if v is True:
        return 1.0
    if v is None or v is False:
        return 0.0
    return float(v)


def check_record(r: dict, where: str) -> list[str]:
    """The problems of one log record (empty when it is good)."""
    problems = []
    conv = r.get("conversation")
    if isinstance(conv, list):
        if not conv or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in conv
        ):
            problems.append(f'{where}: "conversation" messages must each have a string role and content')
    elif not isinstance(conv, str) or not conv.strip():
        problems.append(f'{where}: "conversation" must be a non-empty string or chat messages')
    if not isinstance(r.get("response"), str) or not r["response"].strip():
        problems.append(f'{where}: "response" must be a non-empty string')
    if "thumbs" in r and r["thumbs"] not in ("up", "down", 1, -1, None):
        problems.append(f'{where}: "thumbs" must be "up", "down", 1 or -1, got {r["thumbs"]!r}')
    for key in COUNTS:
        v = r.get(key)
        if (
            v is not None
            and not isinstance(v, bool)
            and not (isinstance(v, int | float) and v >= 0 and math.isfinite(v))
        ):
            problems.append(f'{where}: "{key}" must be a count >= 0 (or true / false), got {v!r}')
    v = r.get("dwell_seconds")
    if v is not None and not (isinstance(v, int | float) and not isinstance(v, bool) and v >= 0):
        problems.append(f'{where}: "dwell_seconds" must be a number >= 0, got {v!r}')
    for key in FLAGS:
        if key in r and not isinstance(r[key], bool):
            problems.append(f'{where}: "{key}" must be true or false, got {r[key]!r}')
    for key in ("id", "regenerated_from", "user", "edited_to"):
        if key in r and r[key] is not None and not isinstance(r[key], str):
            problems.append(f'{where}: "{key}" must be a string, got {r[key]!r}')
    return problems


def read_log(path: str | Path) -> list[dict]:
    """The checked records of a behaviour log; every bad line is named (FeedbackError) and none is returned."""
    path = Path(path)
    lines = read_jsonl_lines(path)
    if not lines:
        raise FeedbackError(f"{path}: no interactions (the file is empty)")
    problems, records, ids = [], [], {}
    for lineno, r in lines:
        where = f"{path}:{lineno}"
        problems += check_record(r, where)
        if isinstance(r.get("id"), str):
            if r["id"] in ids:
                problems.append(f"{where}: duplicate id {r['id']!r} (first on line {ids[r['id']]})")
            ids[r["id"]] = lineno
        records.append({**r, "_line": lineno})
    for r in records:
        src = r.get("regenerated_from")
        if isinstance(src, str) and src not in ids:
            problems.append(
                f'{path}:{r["_line"]}: "regenerated_from" names {src!r}, which no record of the log has'
            )
    if problems:
        shown = problems[:20]
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise FeedbackError(
            f"{path}: {len(problems)} bad line(s); nothing was imported:\n" + "\n".join(shown) + more
        )
    return records


def kto_examples(records: list[dict], rule: FeedbackRule) -> list[dict]:
    """Unpaired examples by the rule (pure): desirable or undesirable; conflicting or signal-less records out."""
    out = []
    for r in records:
        s = signals(r)
        good, bad = bool(s & set(rule.desirable)), bool(s & set(rule.undesirable))
        if good == bad:
            continue
        out.append(
            {"prompt": r["conversation"], "completion": r["response"], "label": good, "line": r["_line"]}
            | ({"user": r["user"]} if r.get("user") else {})
        )
    return out


def implied_pairs(records: list[dict]) -> list[dict]:
    """The preference pairs the log implies (pure): a regenerated answer loses to its replacement (when the
    replacement was not regenerated in turn), and an answer loses to the user's edit of it."""
    by_id = {r["id"]: r for r in records if isinstance(r.get("id"), str)}
    out = []
    for r in records:
        src = by_id.get(r.get("regenerated_from"))
        if src is not None and r.get("regenerated") is not True:
            out.append(
                {
                    "prompt": src["conversation"],
                    "chosen": r["response"],
                    "rejected": src["response"],
                    "why": "regenerated",
                }
                | ({"user": r["user"]} if r.get("user") else {})
            )
        if "edited" in signals(r):
            out.append(
                {
                    "prompt": r["conversation"],
                    "chosen": r["edited_to"],
                    "rejected": r["response"],
                    "why": "edited",
                }
                | ({"user": r["user"]} if r.get("user") else {})
            )
    return out


def bin_word(count: float) -> str:
    x = math.log1p(max(0.0, count))
    word = BINS[0][1]
    for threshold, name in BINS:
        if x >= threshold:
            word = name
    return word


def behaviour_text(r: dict) -> str | None:
    """The record's behaviour as text (RLHB), from the counts it has; None when it has none."""
    parts = []
    phrases = {
        "views": "readers viewed it",
        "clicks": "clicked through",
        "likes": "liked it",
        "dislikes": "disliked it",
    }
    for key in COUNTS:
        if r.get(key) is not None:
            word = bin_word(_count(r[key]))
            phrase = "viewed it" if key == "views" and word == "no one" else phrases[key]
            parts.append(f"{word} {phrase}")
    if not parts:
        return None
    return ", ".join(parts).capitalize() + "."


def behaviour_records(records: list[dict]) -> list[dict]:
    out = []
    for r in records:
        text = behaviour_text(r)
        if text is None:
            continue
        out.append(
            {
                "query": r["conversation"],
                "response": r["response"],
                "behaviour": text,
                "counts": {k: _count(r.get(k)) for k in COUNTS if r.get(k) is not None},
                "line": r["_line"],
            }
            | ({"user": r["user"]} if r.get("user") else {})
        )
    return out


def rlhb_prompts(records: list[dict], desired: str) -> list[dict]:
    """The generator's prompts (pure): each distinct query of the log once, asking for the desired behaviour."""
    seen, out = set(), []
    for r in records:
        q = last_user_turn(r["conversation"])
        if q in seen:
            continue
        seen.add(q)
        out.append({"id": f"q{len(out)}", "prompt": generator_prompt(q, desired), "query": q})
    return out


def import_log(
    log: str | Path, out_dir: str | Path, rule: FeedbackRule | None = None, desired: str = DESIRED
) -> dict:
    """Read and check the whole log, then write kto.jsonl, pairs.jsonl, behaviour.jsonl and rlhb-prompts.jsonl
    into `out_dir` (each atomically). Returns the counts."""
    records = read_log(log)
    rule = rule or FeedbackRule()
    kto, pairs, beh = kto_examples(records, rule), implied_pairs(records), behaviour_records(records)
    out = Path(out_dir)
    write_jsonl(out / "kto.jsonl", kto)
    write_jsonl(out / "pairs.jsonl", pairs)
    write_jsonl(out / "behaviour.jsonl", beh)
    write_jsonl(out / "rlhb-prompts.jsonl", rlhb_prompts(records, desired))
    return {
        "interactions": len(records),
        "kto": len(kto),
        "desirable": sum(e["label"] for e in kto),
        "pairs": len(pairs),
        "behaviour": len(beh),
    }


# -- a simulated log, for this project's measurements ---------------------------------------------------------


def simulate_log(pairs: list[dict], seed: int = 0) -> list[dict]:
    """A behaviour log built from preference pairs (SIMULATED: there is no public behaviour log here). Per pair,
    the rejected answer is shown first and the chosen one replaces it when the user regenerates (probability
    0.3), otherwise both are logged as separate interactions. Views ~ round(exp(N(4, 1))); clicks ~
    Binomial(views, 0.15); a chosen answer's likes ~ Binomial(clicks, 0.5) and dislikes ~ Binomial(clicks, 0.1);
    a rejected answer's the other way round; thumbs (from one user): up for a chosen answer with probability
    0.4, down for a rejected one with probability 0.4, none otherwise. Seeded, deterministic."""
    rng = random.Random(seed)

    def binomial(n: int, p: float) -> int:
        return sum(rng.random() < p for _ in range(n))

    def counts(good: bool) -> dict:
        views = round(math.exp(rng.gauss(4, 1)))
        clicks = binomial(views, 0.15)
        likes = binomial(clicks, 0.5 if good else 0.1)
        dislikes = binomial(clicks, 0.1 if good else 0.5)
        return {"views": views, "clicks": clicks, "likes": likes, "dislikes": dislikes}

    log = []
    for i, p in enumerate(pairs):
        bad = {"id": f"s{i}-r", "conversation": p["prompt"], "response": p["rejected"], **counts(False)}
        good = {"id": f"s{i}-c", "conversation": p["prompt"], "response": p["chosen"], **counts(True)}
        if rng.random() < 0.4:
            good["thumbs"] = "up"
        if rng.random() < 0.4:
            bad["thumbs"] = "down"
        if rng.random() < 0.3:
            bad["regenerated"] = True
            good["regenerated_from"] = bad["id"]
        user = f"u{rng.randrange(max(1, len(pairs) // 3))}"
        log += [{**bad, "user": user}, {**good, "user": user}]
    return log
