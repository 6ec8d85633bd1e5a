"""The reward_model stage: a round trains a Bradley-Terry reward model (rlaif/reward.py) on hybrid labels: its
own AI-judged preference pairs mixed with offline human pairs in a configured share (the lecture's hybrid of
RLAIF and RLHF), and reports the model's accuracy on a held-out human-labelled file every round.

With `reward_model.principle_conditioned`, each AI-judged pair carries its principle's question into the
reward model's input (SALMON, arXiv:2310.05910), so the constitution still steers the reward model.

Writes reward_model/ (reward.json, head.safetensors) and rm_eval.json (held-out accuracy, length split).

    rlaif run runs/demo --set 'round.stages=["generate","judge","preferences","reward_model","train","merge"]' \
        --set 'reward_model.human=["../shared/data/hh-harmless-train.jsonl"]' \
        --set reward_model.heldout=../shared/data/hh-harmless-dev.jsonl
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from rlaif.checks import check, finite_numbers

PRODUCES_MODEL = False
LOWER_ON_OOM = "reward_model.batch_size or reward_model.max_length"


@dataclass
class RewardModelConfig:
    human: list[str] = field(default_factory=list)
    """Human-labelled preference files (TRL format), relative to the run folder or absolute."""
    human_share: float = 1.0
    """Human pairs per AI-judged pair in each round's training set (0 = AI labels only); all of them when
    there are fewer."""
    heldout: str = ""
    """A human-labelled file the reward model is measured on each round (never trained on)."""
    principle_conditioned: bool = False
    """Put the principle's question into the reward model's input (AI-judged pairs carry theirs)."""
    max_length: int = 512
    """Conversation + response tokens the reward model reads; the conversation is cut from the left."""
    margin: float = 0.0
    """Bradley-Terry margin: the loss asks r(chosen) - r(rejected) to exceed it."""
    centring: float = 0.01
    """Reward centring weight (arXiv:2312.09244): keeps rewards near 0 on average, comparable across rounds."""
    batch_size: int = 8
    """Sequences per forward pass when computing features."""

    def __post_init__(self):
        finite_numbers(self, "reward_model")
        check(self.human_share >= 0, "reward_model.human_share", "must be >= 0")
        check(self.max_length >= 16, "reward_model.max_length", "must be >= 16")
        check(self.margin >= 0, "reward_model.margin", "must be >= 0")
        check(self.centring >= 0, "reward_model.centring", "must be >= 0")
        check(self.batch_size >= 1, "reward_model.batch_size", "must be >= 1")


def outputs(figures: dict) -> list[str]:
    return ["reward_model/reward.json"] + (["rm_eval.json"] if figures.get("heldout") else [])


def _path(run, name: str):
    from pathlib import Path

    p = Path(name)
    return p if p.is_absolute() else run.dir / p


def validate(run) -> None:
    from rlaif.data import load_preferences
    from rlaif.judge_eval import load_labelled

    cfg = run.config.reward_model
    run.cache["human"] = [p for f in cfg.human for p in load_preferences(str(_path(run, f)))]
    if cfg.heldout:
        run.cache["heldout"] = load_labelled(_path(run, cfg.heldout))


def principle_text(constitution, pid: str) -> str:
    """The question(s) of a pair's principle id ("a+b" for an ensemble)."""
    by_id = {p.id: p.question for p in constitution.principles}
    return " ".join(by_id.get(x, x) for x in pid.split("+"))


def run(r) -> dict:
    from rlaif.data import read_jsonl, write_json
    from rlaif.reward import RewardModel, accuracy_report, train_frozen

    cfg = r.config.reward_model
    t0 = time.perf_counter()
    ai = [
        {**p, "principle_text": principle_text(r.run.constitution, p["principle"])}
        for p in read_jsonl(r.dir / "preferences.jsonl")
    ]
    human = r.run.cache.get("human", [])
    n_human = min(len(human), round(cfg.human_share * len(ai))) if ai else len(human)
    picked = random.Random(f"{r.seed}:rm:{r.k}").sample(human, n_human)
    pairs = ai + picked
    r.progress.note(f"round {r.k}: reward model on {len(ai)} AI-judged and {len(picked)} human pairs")
    out = r.dir / "reward_model"
    spec = train_frozen(
        pairs,
        r.model,
        out,
        r.pool,
        sources=["preferences.jsonl", *cfg.human],
        principle_conditioned=cfg.principle_conditioned,
        max_length=cfg.max_length,
        margin=cfg.margin,
        centring=cfg.centring,
        batch_size=cfg.batch_size,
        seed=r.seed,
        progress=r.progress,
    )
    figures = {"pairs": len(pairs), "ai_pairs": len(ai), "human_pairs": len(picked), "l2": spec.figures["l2"]}
    held = r.run.cache.get("heldout")
    if held:
        rm = RewardModel(out, r.pool, cfg.batch_size)
        items = [(p["messages"], p["chosen"], None) for p in held]
        items += [(p["messages"], p["rejected"], None) for p in held]
        rewards = rm.rewards(items, r.progress)
        report = accuracy_report(held, rewards[: len(held)], rewards[len(held) :])
        write_json(r.dir / "rm_eval.json", {"heldout": cfg.heldout, **report})
        figures.update(heldout=cfg.heldout, heldout_accuracy=report["accuracy"], heldout_ci95=report["ci95"])
    figures["seconds"] = time.perf_counter() - t0
    return figures
