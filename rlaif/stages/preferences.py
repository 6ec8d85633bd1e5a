"""The preferences stage: the judge's kept verdicts become preference pairs (chosen = the judge's winner),
and the round's training set is drawn: this round's fresh pairs plus replayed pairs of earlier rounds and
imported offline pairs in the configured shares (the online/offline hybrid: `data.replay_share`,
`data.offline`, `data.offline_share`, `data.offline_min`). Draws are seeded per round.

With `critique.pairs`, a round that ran the critique stage also turns each prompt's final revision and its
initial response into a pair (revision chosen), as the alignment-handbook's CAI recipe does; a round may then
skip the judge altogether (round.stages = ["critique", "preferences", "dpo", "merge"]).

People's labels on the judge's verdicts (`rlaif review`, round_<k>/human_labels.jsonl) apply here: a flip swaps
chosen and rejected, a tie drops the pair, and the pairs people labelled in earlier rounds join every later
round's training set (`data.human_replay`).

Writes preferences.jsonl (this round's fresh pairs, the AI's verdicts, each with its `pair_id`) and
train_pairs.jsonl (what training sees, each pair with its `source`: online, revision, human:round_<j>,
replay:round_<j>, offline:<file>, and its `label`: human or ai).

    rlaif run runs/demo --set data.replay_share=0.5
"""

from __future__ import annotations

import random
import time

from rlaif.data import SCHEMA_VERSION, DataError, load_feedback, read_jsonl, write_jsonl
from rlaif.kto import unpaired_examples
from rlaif.layout import portable, round_dir
from rlaif.review.labels import apply_labels, load_labels, online_pairs, round_pairs

PRODUCES_MODEL = False
LOWER_ON_OOM = "data.offline_share or data.offline_min"


def outputs(figures: dict) -> list[str]:
    return ["preferences.jsonl", "train_pairs.jsonl"] + (
        ["train_unpaired.jsonl"] if "unpaired" in figures else []
    )


def write_training_sets(round_, mix: list[dict], judgements: list[dict]) -> dict:
    """train_pairs.jsonl (the pairs) and, under dpo.loss = "kto", train_unpaired.jsonl (the unpaired examples,
    rlaif/kto.py); offline unpaired records go to the latter only. Returns the figures of what was written."""
    pairs = [p for p in mix if not p.get("unpaired")]
    write_jsonl(round_.dir / "train_pairs.jsonl", pairs)
    figures = {"train_pairs": len(pairs)}
    if round_.config.dpo.loss == "kto":
        offline = [p for p in mix if p.get("unpaired")]
        unpaired = unpaired_examples(round_.config.dpo, pairs, judgements, offline)
        write_jsonl(round_.dir / "train_unpaired.jsonl", unpaired)
        figures["unpaired"] = len(unpaired)
        figures["desirable"] = sum(bool(u["label"]) for u in unpaired)
    return figures


def validate(run) -> None:
    records = offline_pairs(run)  # bad offline data fails now, not after a round of generation and judging
    if run.config.dpo.loss != "kto":
        unpaired = next((r for r in records if r.get("unpaired")), None)
        if unpaired is not None:
            raise DataError(
                f"{unpaired['source'].split(':', 1)[1]}: holds unpaired examples (prompt/completion/label), which "
                'only the KTO loss reads: set dpo.loss = "kto", or give preference pairs (prompt/chosen/rejected)'
            )


def offline_pairs(run) -> list[dict]:
    """The imported offline preference pairs, read once per run."""

    if "offline" not in run.cache:
        pairs = []
        for source in run.config.data.offline:
            run.progress.note(f"reading offline preferences from {source}")
            pairs.extend(
                {**p, "source": f"offline:{source}", "label": "imported"}
                for p in load_feedback(source, run.dir, run.config.data.offline_split)
            )
        run.cache["offline"] = pairs
    return run.cache["offline"]


def preference_pairs(k: int, generator: str, judgements: list[dict]) -> list[dict]:
    """The kept judgements as preference pairs: chosen is the judge's winner, rejected the other (pure)."""

    prefs = []
    for j in judgements:
        if not j["kept"]:
            continue
        x_wins = j["winner"] == "x"
        chosen, rejected = (j["x"], j["y"]) if x_wins else (j["y"], j["x"])
        chosen_finished, rejected_finished = (
            (j["x_finished"], j["y_finished"]) if x_wins else (j["y_finished"], j["x_finished"])
        )
        samples = j.get("samples")
        prefs.append(
            {
                "schema": SCHEMA_VERSION,
                "pair_id": f"{k}:{j['prompt_id']}:{'-'.join(map(str, samples)) if samples else len(prefs)}",
                "round": k,
                "prompt_id": j["prompt_id"],
                "prompt": j["prompt"],
                "chosen": chosen,
                "rejected": rejected,
                "chosen_finished": chosen_finished,
                "rejected_finished": rejected_finished,
                "principle": j["principle"],
                "p_chosen": j["p_x"] if x_wins else 1 - j["p_x"],
                "p_first_xy": j["p_first_xy"],
                "p_first_yx": j["p_first_yx"],
                "chosen_is_x": x_wins,
                "judge": j["judge"],
                "generator": generator,
            }
        )
    return prefs


def revision_pairs(k: int, records: list[dict]) -> list[dict]:
    """Each revised prompt's final revision preferred over its initial response (pure)."""

    pairs = []
    for x in records:
        if x["final"] is None:
            continue
        last = next(p for p in reversed(x["passes"]) if p["kept"])
        pairs.append(
            {
                "schema": SCHEMA_VERSION,
                "pair_id": f"{k}:{x['prompt_id']}:revision",
                "round": k,
                "prompt_id": x["prompt_id"],
                "prompt": x["prompt"],
                "chosen": x["final"],
                "rejected": x["initial"],
                "chosen_finished": True,
                "rejected_finished": x["initial_finished"],
                "principle": last["principle"],
                "judge": "revision",
                "generator": x["generator"],
            }
        )
    return pairs


def training_mix(round_, prefs: list[dict]) -> list[dict]:
    """This round's training set: its fresh pairs (with the reviewer's labels of this round applied, if any),
    every pair a person labelled in earlier rounds (`data.human_replay`), plus replayed AI-labelled pairs of
    earlier rounds and imported offline pairs in the configured shares. Each pair says `label: human | ai`."""

    dc = round_.config.data
    rng = random.Random(f"{round_.seed}:mix:{round_.k}")
    mix = apply_labels(online_pairs(prefs), load_labels(round_.dir))
    earlier, human = [], []
    for j in range(1, round_.k):
        rdir = round_dir(round_.run.dir, j)
        if not (rdir / "preferences.jsonl").is_file():
            continue
        for p in apply_labels(round_pairs(rdir), load_labels(rdir)):
            if p["label"] == "human":
                human.append({**p, "source": f"human:round_{j}"})
            else:
                earlier.append({**p, "source": f"replay:round_{j}"})
    if dc.human_replay:
        mix.extend(human)
    n_replay = round(dc.replay_share * len(prefs))
    if n_replay:
        mix.extend(rng.sample(earlier, min(n_replay, len(earlier))))
    n_offline = max(round(dc.offline_share * len(prefs)), dc.offline_min)
    if n_offline and dc.offline:
        pool = offline_pairs(round_.run)
        mix.extend(rng.sample(pool, min(n_offline, len(pool))))
    return mix


def count(items) -> dict:
    out: dict = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def run(round_) -> dict:

    t0 = time.perf_counter()
    judged = round_.dir / "judgements.jsonl"  # absent when the round has no judge stage (revision pairs only)
    judgements = read_jsonl(judged) if judged.is_file() else []
    prefs = preference_pairs(round_.k, portable(round_.model, round_.run.dir), judgements)
    revised = round_.dir / "revisions.jsonl"
    if round_.config.critique.pairs and revised.is_file():
        prefs += revision_pairs(round_.k, read_jsonl(revised))
    write_jsonl(round_.dir / "preferences.jsonl", prefs)
    mix = training_mix(round_, prefs)
    written = write_training_sets(round_, mix, judgements)
    return {
        "pairs": len(prefs),
        "human_labels": count(p["label"] for p in mix).get("human", 0),
        "by_principle": count(p["principle"] for p in prefs),
        **written,
        "mix": count(p["source"].split(":")[0] for p in mix),
        "seconds": time.perf_counter() - t0,
    }
