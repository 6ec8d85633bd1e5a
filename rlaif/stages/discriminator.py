"""The discriminator stage (RLHB, rlaif/rlhb.py): each round fits the discriminator of real logged (query,
response, behaviour) triplets against fakes, which the rl stage then uses as its reward (`rl.reward =
"discriminator"`); with `rlhb.mode = "predictor"` it fits RLHB-C's behaviour predictor instead (`rl.reward =
"behaviour"`).

Fakes: every logged record with another record's behaviour text (the warm-up), and the round's generations (the
generate stage's answers to the queries conditioned on `rlhb.desired`), of which the best `rlhb.demo_share` by the
previous round's discriminator are kept as online demonstrations (real). A fixed, seeded share of the records
and of the generations is held out: the discriminator's held-out accuracy on real versus generated triplets is
the round's figure (`rlaif report`), and a collapsed discriminator (both scored real) stops the run.

Writes discriminator/ (or predictor/) and discriminator.json.

    rlaif run runs/rlhb --rounds 2      # round.stages = ["generate", "discriminator", "rl", "merge"]
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

from rlaif.data import DataError, read_jsonl, write_json
from rlaif.layout import round_dir
from rlaif.models import resolve_model
from rlaif.reward.features import extract
from rlaif.rlhb import (
    Discriminator,
    DiscriminatorSpec,
    collapse_check,
    fit,
    probabilities,
    save,
    swapped_fakes,
    train_predictor,
    triplet_rows,
)
from rlaif.trainer import TrainingDiverged

PRODUCES_MODEL = False
LOWER_ON_OOM = "rlhb.max_records or rlhb.max_length"


def outputs(figures: dict) -> list[str]:
    folder = "predictor" if figures.get("mode") == "predictor" else "discriminator"
    return [f"{folder}", "discriminator.json"]


def _records(run) -> list[dict]:
    if "rlhb" not in run.cache:
        cfg = run.config.rlhb
        path = Path(cfg.behaviour)
        path = path if path.is_absolute() else run.dir / path
        if not path.is_file():
            raise DataError(
                f"{path}: no behaviour log here (rlhb.behaviour); make it with: rlaif feedback import LOG --run {run.dir}"
            )
        records = [r for r in read_jsonl(path) if r.get("behaviour")]
        if len(records) < 10:
            raise DataError(f"{path}: {len(records)} records with a behaviour text; RLHB needs at least 10")
        rng = random.Random(f"{run.config.seed}:rlhb")
        rng.shuffle(records)
        if cfg.max_records:
            records = records[: cfg.max_records]
        n_held = max(1, round(cfg.heldout_share * len(records)))
        run.cache["rlhb"] = (records[n_held:], records[:n_held])
    return run.cache["rlhb"]


def validate(run) -> None:
    _records(run)


def _generations(round_) -> list[tuple]:
    """The round's generations as (query, response, desired behaviour) triplets."""
    path = round_.dir / "responses.jsonl"
    if not path.is_file():
        return []
    queries = {p["id"]: p.get("query", p["prompt"]) for p in round_.run.prompts}
    desired = round_.config.rlhb.desired
    return [(queries.get(x["prompt_id"], x["prompt"]), x["text"], desired) for x in read_jsonl(path)]


def run(round_) -> dict:

    cfg = round_.config.rlhb
    t0 = time.perf_counter()
    train, held = _records(round_.run)
    base = round_.run.initial
    if cfg.mode == "predictor":
        figures = train_predictor(
            train, base, round_.dir / "predictor", round_.pool, cfg.max_length, round_.progress
        )
        figures = {"mode": "predictor", **figures, "seconds": time.perf_counter() - t0}
        write_json(round_.dir / "discriminator.json", figures)
        return figures

    gens = _generations(round_)
    rng = random.Random(f"{round_.seed}:rlhb-gen:{round_.k}")
    order = list(range(len(gens)))
    rng.shuffle(order)
    n_held = round(cfg.heldout_share * len(gens))
    gen_held = [gens[i] for i in order[:n_held]]
    gen_train = [gens[i] for i in order[n_held:]]
    demos = []
    previous = round_dir(round_.run.dir, round_.k - 1) / "discriminator"
    if cfg.demo_share and gen_train and (previous / "head.safetensors").is_file():
        scores = Discriminator(previous, round_.pool).logits(gen_train, round_.progress)
        ranked = sorted(range(len(gen_train)), key=lambda i: -scores[i])
        keep = set(ranked[: round(cfg.demo_share * len(gen_train))])
        demos = [gen_train[i] for i in sorted(keep)]
        gen_train = [g for i, g in enumerate(gen_train) if i not in keep]

    real = [(r["query"], r["response"], r["behaviour"]) for r in train] + demos
    fake = swapped_fakes(train, round_.seed) + gen_train
    real_held = [(r["query"], r["response"], r["behaviour"]) for r in held]
    swap_held = swapped_fakes(held, round_.seed + 1)
    model, tok = round_.pool.model(resolve_model(base))
    groups = [real, fake, real_held, swap_held, gen_held]
    rows = [triplet_rows(tok, g, cfg.max_length) for g in groups]
    flat = [row for g in rows for row in g]
    f = extract(model, tok, flat, 8, round_.progress)
    parts, s = [], 0
    for g in rows:
        parts.append(f[s : s + len(g)])
        s += len(g)
    f_real, f_fake, f_real_held, f_swap_held, f_gen_held = parts
    w, b = fit(f_real, f_fake, cfg.l2)
    p_real = probabilities(f_real_held, w, b)
    p_swap = probabilities(f_swap_held, w, b)
    p_gen = probabilities(f_gen_held, w, b)

    def acc(pos, neg):
        n = len(pos) + len(neg)
        return (sum(p >= 0.5 for p in pos) + sum(p < 0.5 for p in neg)) / n if neg and pos else None

    figures = {
        "mode": "adversarial",
        "real": len(real),
        "demonstrations": len(demos),
        "fakes_swapped": len(fake) - len(gen_train),
        "fakes_generated": len(gen_train),
        "heldout_accuracy_generated": acc(p_real, p_gen),
        "heldout_accuracy_swapped": acc(p_real, p_swap),
        "p_real_heldout": sum(p_real) / len(p_real) if p_real else None,
        "p_real_generated": sum(p_gen) / len(p_gen) if p_gen else None,
        "generation_reward_heldout": (sum(math_logit(p) for p in p_gen) / len(p_gen) if p_gen else None),
    }
    save(
        round_.dir / "discriminator",
        w,
        b,
        DiscriminatorSpec(base=base, max_length=cfg.max_length, figures=figures),
    )
    figures["seconds"] = time.perf_counter() - t0
    write_json(round_.dir / "discriminator.json", figures)
    collapsed = collapse_check(p_real, p_gen, cfg.collapse)
    if collapsed:
        raise TrainingDiverged(collapsed)
    return figures


def math_logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))
