"""People's labels on the AI's verdicts (hybrid labels): the file, the lock, and what the labels do to pairs.

A round's reviewed pairs are `round_<k>/human_labels.jsonl`, one record per pair (the last label a pair got):

    {"schema": 1, "pair_id": "1:harm-01:0-3", "round": 1, "prompt_id": "harm-01", "principle": "hate",
     "label": "keep" | "flip" | "tie", "agree": true | false | null,
     "ai_p_chosen": 0.64, "judge": "smollm2-135m-harmless",
     "prompt": ..., "chosen": ..., "rejected": ...,      # in the reviewer's order (a flip swaps the AI's)
     "reviewer": "ana", "time": "2026-12-02T10:40:00+00:00"}

keep confirms the AI's verdict, flip says the other response is better, tie says neither (the pair is dropped
from training). A record is whole on its own: the file loads as TRL preference pairs (ties skipped) into
`rlaif rm train`, `reward_model.human`, `data.offline` and `rlaif judge-eval --data`.

Every label rewrites the file atomically, so a killed review loses at most the pair on screen, and a second
review of the round resumes from it. One reviewer at a time per round: `ReviewLock` (a flock on
`round_<k>/.review.lock`) refuses a second one with the holder's pid.
"""

from __future__ import annotations

import getpass
import os
import random
from datetime import UTC, datetime
from pathlib import Path

from rlaif.data import (
    SCHEMA_VERSION,
    DataError,
    FolderBusy,
    FolderLock,
    read_jsonl,
    read_jsonl_lines,
    write_jsonl,
)
from rlaif.judge_eval import wilson

LABELS_FILE = "human_labels.jsonl"
LABELS = ("keep", "flip", "tie")
ORDERS = ("uncertain", "disagreement", "random", "file")


class ReviewBusy(FolderBusy):
    """Another reviewer has this round open."""


class ReviewLock(FolderLock):
    def __init__(self, rdir: str | Path):
        super().__init__(
            Path(rdir) / ".review.lock",
            "already being reviewed (pid {holder}); one reviewer per round at a time: wait for them to quit, "
            "or label elsewhere and bring the labels in with `rlaif review --import`",
            ReviewBusy,
        )


def pair_id(pair: dict, index: int) -> str:
    """A pair's stable id: the one the preferences stage wrote, or (a run made before ids) its round, prompt
    and place in preferences.jsonl."""
    return pair.get("pair_id") or f"{pair.get('round', 0)}:{pair['prompt_id']}:#{index}"


def round_pairs(rdir: str | Path) -> list[dict]:
    """A round's judged pairs (preferences.jsonl, the AI's verdicts), each with its `pair_id`."""
    path = Path(rdir) / "preferences.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: no judged pairs yet (the round's preferences stage has not run)")
    return [{**p, "pair_id": pair_id(p, i)} for i, p in enumerate(read_jsonl(path))]


JUDGE_DETAILS = ("mode", "score_x", "score_y", "rationale_xy", "rationale_yx", "judged_by", "kinds")


def review_pairs(rdir: str | Path) -> list[dict]:
    """The round's pairs with what the judge said of each beside its verdict (rewards or pointwise scores,
    rationales, the model that judged): from the judgement of the same prompt and the same two responses."""
    rdir = Path(rdir)
    pairs = round_pairs(rdir)
    path = rdir / "judgements.jsonl"
    if path.is_file():
        details = {}
        for j in read_jsonl(path):
            key = (j.get("prompt_id"), frozenset((j.get("x"), j.get("y"))))
            details[key] = {k: j[k] for k in JUDGE_DETAILS if j.get(k) is not None}
        pairs = [
            {**details.get((p["prompt_id"], frozenset((p["chosen"], p["rejected"]))), {}), **p} for p in pairs
        ]
    return pairs


def default_reviewer(configured: str = "") -> str:
    if configured:
        return configured
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "") or "reviewer"


def load_labels(rdir: str | Path) -> dict[str, dict]:
    """pair_id -> label record of a round (empty when nobody reviewed it); the last record of a pair wins."""
    path = Path(rdir) / LABELS_FILE
    if not path.exists():
        return {}
    out = {}
    for lineno, r in read_jsonl_lines(path):
        if r.get("label") not in LABELS or not isinstance(r.get("pair_id"), str):
            raise DataError(
                f'{path}:{lineno}: a label record needs "pair_id" and "label" (one of {", ".join(LABELS)})'
            )
        out[r["pair_id"]] = r
    return out


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def label_record(pair: dict, label: str, reviewer: str, time: str | None = None) -> dict:
    """The record a label writes (pure but for the clock): the pair in the reviewer's order."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    flip = label == "flip"
    return {
        "schema": SCHEMA_VERSION,
        "pair_id": pair["pair_id"],
        "round": pair.get("round"),
        "prompt_id": pair.get("prompt_id"),
        "principle": pair.get("principle"),
        "label": label,
        "agree": None if label == "tie" else not flip,
        "ai_p_chosen": pair.get("p_chosen"),
        "judge": pair.get("judged_by") or pair.get("judge"),
        "prompt": pair["prompt"],
        "chosen": pair["rejected"] if flip else pair["chosen"],
        "rejected": pair["chosen"] if flip else pair["rejected"],
        "reviewer": reviewer,
        "time": time or now(),
    }


class LabelStore:
    """A round's labels while a review is open: every change is written at once (atomically)."""

    def __init__(self, rdir: str | Path, reviewer: str):
        self.rdir = Path(rdir)
        self.path = self.rdir / LABELS_FILE
        self.reviewer = reviewer
        self.labels = load_labels(self.rdir)
        self.history: list[tuple[str, dict | None]] = []  # (pair_id, the record it replaced) for undo

    def set(self, pair: dict, label: str) -> dict:
        record = label_record(pair, label, self.reviewer)
        self.history.append((pair["pair_id"], self.labels.get(pair["pair_id"])))
        self.labels[pair["pair_id"]] = record
        self.save()
        return record

    def merge(self, records: list[dict]) -> None:
        """Labels from elsewhere (an import): they replace this round's labels of the same pairs."""
        for r in records:
            self.labels[r["pair_id"]] = r
        self.save()

    def undo(self) -> str | None:
        """Take back the last label of this session; returns its pair_id (None when there is nothing to undo)."""
        if not self.history:
            return None
        pid, before = self.history.pop()
        if before is None:
            self.labels.pop(pid, None)
        else:
            self.labels[pid] = before
        self.save()
        return pid

    def save(self) -> None:
        write_jsonl(self.path, list(self.labels.values()))


def agreement(labels) -> dict:
    """How often the judge agreed with the reviewer (keep) rather than not (flip); ties do not count (pure)."""
    judged = [r for r in labels if r["label"] != "tie"]
    agree = sum(r["label"] == "keep" for r in judged)
    n = len(judged)
    return {
        "reviewed": len(labels),
        "compared": n,
        "agree": agree,
        "agreement": agree / n if n else None,
        "ci95": wilson(agree, n),
        "flips": n - agree,
        "ties": len(labels) - n,
    }


def agreement_by_principle(labels) -> dict[str, dict]:
    groups: dict[str, list] = {}
    for r in labels:
        groups.setdefault(r.get("principle") or "?", []).append(r)
    return {p: agreement(rs) for p, rs in sorted(groups.items())}


def disagreement(pair: dict) -> float:
    """How far the judge's two readings (x first, y first) disagree on the winner's probability."""
    a, b = pair.get("p_first_xy"), pair.get("p_first_yx")
    if a is None or b is None:
        return 0.0
    return abs(a - (1 - b))


def review_order(pairs: list[dict], order: str, seed: int = 0) -> list[dict]:
    """The pairs in the order a reviewer sees them (pure). `uncertain` puts the verdicts the judge was least
    sure of first (where a person's label is worth most); `disagreement` those whose two readings disagreed
    most; `random` a seeded shuffle; `file` the judge's order."""
    if order not in ORDERS:
        raise DataError(f"--order must be one of {', '.join(ORDERS)}, got {order!r}")
    if order == "uncertain":
        return sorted(pairs, key=lambda p: (p.get("p_chosen", 1.0), p["pair_id"]))
    if order == "disagreement":
        return sorted(pairs, key=lambda p: (-disagreement(p), p.get("p_chosen", 1.0), p["pair_id"]))
    if order == "random":
        out = list(pairs)
        random.Random(seed).shuffle(out)
        return out
    return list(pairs)


# -- what labels do to training pairs ---------------------------------------------------------------------


def online_pairs(prefs: list[dict]) -> list[dict]:
    """A round's fresh pairs with their training source (pure)."""
    return [{**p, "source": "revision" if p.get("judge") == "revision" else "online"} for p in prefs]


def apply_labels(pairs: list[dict], labels: dict[str, dict]) -> list[dict]:
    """Pairs as training sees them (pure): a pair a person labelled carries `label: human` (flip swaps chosen
    and rejected, tie drops the pair), every other pair `label: ai`. `pairs` hold the AI's orientation (read
    from preferences.jsonl), so applying labels again gives the same result."""
    out = []
    for p in pairs:
        r = labels.get(p.get("pair_id", ""))
        if r is None:
            out.append({**p, "label": p.get("label", "ai")})
            continue
        if r["label"] == "tie":
            continue
        q = {**p, "label": "human", "reviewer": r.get("reviewer")}
        if r["label"] == "flip":
            q.update(
                chosen=p["rejected"],
                rejected=p["chosen"],
                chosen_finished=p.get("rejected_finished", True),
                rejected_finished=p.get("chosen_finished", True),
                flipped=True,
            )
            if "p_chosen" in p:
                q["p_chosen"] = 1 - p["p_chosen"]
            if "chosen_is_x" in p:
                q["chosen_is_x"] = not p["chosen_is_x"]
        out.append(q)
    return out
