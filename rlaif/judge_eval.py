"""How far to trust the judge: its verdicts against human preference labels.

Labelled pairs are JSON Lines of {"prompt": str or [chat messages], "chosen": str, "rejected": str} (the format
of HH-RLHF slices). Each pair is judged like a round judges its pairs (both orders, a sampled principle), with
the human-chosen response as x, and scored:

- agreement: share of pairs whose order-averaged verdict picks the human-chosen response, with a Wilson 95%
  interval; also among the pairs the judge would keep for training;
- position consistency: both orders pick the same response (raw, and after removing the mean position bias);
- first-position rate: how often an order picks whichever response is shown first (0.5 = no position bias);
- drop rate: pairs a round would drop (inconsistent, uncertain, identical);
- the same per principle.

    rlaif judge-eval --data ../shared/data/hh-harmless-dev.jsonl --limit 100
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from rlaif.data import DataError, read_jsonl
from rlaif.progress import SILENT, Progress


def conversation_text(prompt) -> str:
    """A prompt string, or chat messages, as the "User: ... / Assistant: ..." text the judge template shows."""
    if isinstance(prompt, str):
        return f"User: {prompt}"
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def load_labelled(path: str | Path) -> list[dict]:
    """Read labelled pairs; a bad record is reported with its file and record number."""
    records = read_jsonl(path)
    if not records:
        raise DataError(f"{path}: no labelled pairs (the file is empty)")
    out = []
    for i, r in enumerate(records, 1):
        prompt = r.get("prompt")
        ok_messages = isinstance(prompt, list) and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt
        )
        if not (isinstance(prompt, str) or ok_messages):
            raise DataError(
                f'{path}: record {i}: "prompt" must be a string or a list of {{role, content}} messages'
            )
        for key in ("chosen", "rejected"):
            if not isinstance(r.get(key), str):
                raise DataError(f'{path}: record {i}: "{key}" must be a string')
        out.append(
            {"conversation": conversation_text(prompt), "chosen": r["chosen"], "rejected": r["rejected"]}
        )
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n (95% for z = 1.96); (0, 1) when n = 0."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(verdicts) -> dict:
    """Agreement and bias figures for verdicts whose x is the human-chosen response (pure)."""
    n = len(verdicts)
    agree = sum(v.p_x > 0.5 for v in verdicts)
    kept = [v for v in verdicts if v.kept]
    kept_agree = sum(v.winner == "x" for v in kept)
    return {
        "pairs": n,
        "agreement": agree / n if n else None,
        "agreement_ci95": wilson(agree, n),
        "kept": len(kept),
        "agreement_kept": kept_agree / len(kept) if kept else None,
        "agreement_kept_ci95": wilson(kept_agree, len(kept)),
        "position_consistency": sum(v.consistent for v in verdicts) / n if n else None,
        "position_consistency_calibrated": sum(v.consistent_calibrated for v in verdicts) / n if n else None,
        "first_position_rate": sum((v.p_first_xy > 0.5) + (v.p_first_yx > 0.5) for v in verdicts) / (2 * n)
        if n
        else None,
        "tie_rate": sum(v.p_x == 0.5 for v in verdicts) / n if n else None,
        "drop_rate": (n - len(kept)) / n if n else None,
    }


def evaluate(pairs: list[dict], judge, constitution, seed: int = 0, progress: Progress = SILENT) -> dict:
    """Judge labelled pairs (x = human-chosen) and score the verdicts, overall and per principle."""
    items = []
    for i, p in enumerate(pairs):
        principle = constitution.sample(random.Random(f"{seed}:judge-eval:{i}"))
        items.append(
            {"conversation": p["conversation"], "x": p["chosen"], "y": p["rejected"], "principle": principle}
        )
    verdicts = judge.judge(items, progress)
    by_principle: dict[str, list] = {}
    for v in verdicts:
        by_principle.setdefault(v.principle, []).append(v)
    return {
        "summary": summarize(verdicts),
        "by_principle": {pid: summarize(vs) for pid, vs in sorted(by_principle.items())},
        "verdicts": [v.to_dict() for v in verdicts],
    }
