"""The reward_model stage: a round trains a Bradley-Terry reward model (rlaif/reward/) on hybrid labels: its
own AI-judged preference pairs mixed with offline human pairs in a configured share (the lecture's hybrid of
RLAIF and RLHF), and reports the model's accuracy on a held-out human-labelled file every round.

With `reward_model.principle_conditioned`, each AI-judged pair carries its principle's question into the
reward model's input (SALMON, arXiv:2310.05910), so the constitution still steers the reward model.

Writes reward_model/ (reward.json, head.safetensors) and rm_eval.json (held-out accuracy, length split).

    rlaif run runs/demo --set 'round.stages=["generate","judge","preferences","reward_model","dpo","merge"]' \
        --set 'reward_model.human=["../shared/data/hh-harmless-train.jsonl"]' \
        --set reward_model.heldout=../shared/data/hh-harmless-dev.jsonl
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from rlaif.data import load_preferences, write_json
from rlaif.judge_eval import load_labelled
from rlaif.privacy import stage_privacy
from rlaif.review.labels import apply_labels, load_labels, round_pairs
from rlaif.reward.fit import accuracy_report, train_frozen
from rlaif.reward.format import principle_text
from rlaif.reward.model import RewardModel

PRODUCES_MODEL = False
LOWER_ON_OOM = "reward_model.batch_size or reward_model.max_length"


def outputs(figures: dict) -> list[str]:
    return ["reward_model/reward.json"] + (["rm_eval.json"] if figures.get("heldout") else [])


def _path(run, name: str):

    p = Path(name)
    return p if p.is_absolute() else run.dir / p


def validate(run) -> None:

    cfg = run.config.reward_model
    run.cache["human"] = [p for f in cfg.human for p in load_preferences(str(_path(run, f)))]
    if cfg.heldout:
        run.cache["heldout"] = load_labelled(_path(run, cfg.heldout))


def run(round_) -> dict:

    cfg = round_.config.reward_model
    t0 = time.perf_counter()
    # the round's judged pairs, as people corrected them (rlaif review: a flip swaps, a tie drops)
    ai = [
        {**p, "principle_text": principle_text(round_.run.constitution, p["principle"])}
        for p in apply_labels(round_pairs(round_.dir), load_labels(round_.dir))
    ]
    human = round_.run.cache.get("human", [])
    n_human = min(len(human), round(cfg.human_share * len(ai))) if ai else len(human)
    picked = random.Random(f"{round_.seed}:rm:{round_.k}").sample(human, n_human)
    pairs = ai + picked
    round_.progress.note(
        f"round {round_.k}: reward model on {len(ai)} AI-judged and {len(picked)} human pairs"
    )
    out = round_.dir / "reward_model"
    spec = train_frozen(
        pairs,
        round_.model,
        out,
        round_.pool,
        sources=["preferences.jsonl", *cfg.human],
        principle_conditioned=cfg.principle_conditioned,
        max_length=cfg.max_length,
        margin=cfg.margin,
        centring=cfg.centring,
        batch_size=cfg.batch_size,
        seed=round_.seed,
        progress=round_.progress,
        private=stage_privacy(round_, "reward_model") or None,
    )
    figures = {
        "pairs": len(pairs),
        "ai_pairs": sum(p["label"] == "ai" for p in ai),
        "reviewed_pairs": sum(p["label"] == "human" for p in ai),
        "human_pairs": len(picked),
        "l2": spec.figures["l2"],
        **({"privacy": spec.figures["privacy"]} if "privacy" in spec.figures else {}),
    }
    held = round_.run.cache.get("heldout")
    if held:
        rm = RewardModel(out, round_.pool, cfg.batch_size)
        items = [(p["messages"], p["chosen"], None) for p in held]
        items += [(p["messages"], p["rejected"], None) for p in held]
        rewards = rm.rewards(items, round_.progress)
        report = accuracy_report(held, rewards[: len(held)], rewards[len(held) :])
        write_json(round_.dir / "rm_eval.json", {"heldout": cfg.heldout, **report})
        figures.update(heldout=cfg.heldout, heldout_accuracy=report["accuracy"], heldout_ci95=report["ci95"])
    figures["seconds"] = time.perf_counter() - t0
    return figures
