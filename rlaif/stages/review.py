"""The review stage: the run pauses after a round's preferences are built so that people can confirm or flip
the judge's verdicts (`rlaif review RUN --round K`); the next `rlaif run` trains the round on the corrected
pairs. Turned on by `round.review = "pause"` (or by naming "review" after "preferences" in `round.stages`).

The first time it runs in a round it writes review.json (the pause) and stops the run with the commands to
review and continue. The next time, it rebuilds train_pairs.jsonl from the AI's pairs with the round's labels
applied (a flip swaps chosen and rejected, a tie drops the pair, each pair says `label: human | ai`), keeping
the replayed and offline pairs the preferences stage drew, and records how often the judge agreed.

    rlaif run runs/demo --set round.review=pause     # stops after round 1's preferences
    rlaif review runs/demo --round 1                 # label pairs (keys: k keep, f flip, t tie, ? help)
    rlaif run runs/demo --set round.review=pause     # trains round 1 on the corrected pairs
"""

from __future__ import annotations

import time

from rlaif.data import read_json_file, read_jsonl, write_json
from rlaif.review.labels import agreement, apply_labels, load_labels, now, online_pairs, round_pairs
from rlaif.stages import Paused
from rlaif.stages.preferences import write_training_sets

PRODUCES_MODEL = False
LOWER_ON_OOM = "nothing (the review stage loads no model)"


def outputs(figures: dict) -> list[str]:
    return ["review.json", "train_pairs.jsonl"] + (["train_unpaired.jsonl"] if "unpaired" in figures else [])


def validate(run) -> None:
    pass


def run(round_) -> dict:

    t0 = time.perf_counter()
    marker = round_.dir / "review.json"
    pairs = round_pairs(round_.dir)
    if read_json_file(marker) is None:
        write_json(marker, {"paused": now(), "pairs": len(pairs)})
        d, k = round_.run.dir, round_.k
        raise Paused(
            f"round {k}: paused for review: {len(pairs)} judged pairs wait for people to confirm or flip them.\n"
            f"  review:   rlaif review {d} --round {k}      (or --export F --format label-studio|argilla)\n"
            f"  continue: rlaif run {d} ...                  (the same command: round {k} trains on the "
            "corrected pairs)"
        )
    labels = load_labels(round_.dir)
    online = {"online", "revision"}
    drawn = [p for p in read_jsonl(round_.dir / "train_pairs.jsonl") if p.get("source") not in online]
    unpaired = round_.dir / "train_unpaired.jsonl"
    if unpaired.is_file():  # the offline unpaired records the preferences stage drew (kto)
        drawn += [u for u in read_jsonl(unpaired) if u.get("unpaired")]
    mix = apply_labels(online_pairs(pairs), labels) + drawn
    judged = round_.dir / "judgements.jsonl"
    written = write_training_sets(round_, mix, read_jsonl(judged) if judged.is_file() else [])
    ours = [r for r in labels.values() if r["pair_id"] in {p["pair_id"] for p in pairs}]
    stats = agreement(ours)
    write_json(marker, {**(read_json_file(marker) or {}), "continued": now(), **stats})
    return {
        "pairs": len(pairs),
        "reviewed": stats["reviewed"],
        "flipped": stats["flips"],
        "tied": stats["ties"],
        "agreement": stats["agreement"],
        **written,
        "seconds": time.perf_counter() - t0,
    }
