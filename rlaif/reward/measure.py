"""A reward model measured on labelled pairs (`rlaif rm eval`): agreement with the labels, position-free (each
response is scored alone), by principle kind when asked (the matched / mismatched measure of a
principle-conditioned model), and the length split (does it only prefer the longer answer?)."""

from __future__ import annotations

from rlaif.config import JudgeConfig
from rlaif.data import DataError
from rlaif.judge_eval import evaluate, load_labelled
from rlaif.principles import load_constitution
from rlaif.progress import SILENT, Progress
from rlaif.reward.fit import accuracy_report
from rlaif.reward.judge import RewardJudge
from rlaif.reward.model import RewardModel
from rlaif.reward.refusals import refusal_pairs


def measure(
    data: str,
    model: str,
    pool,
    constitution: str = "default",
    kind: str | None = None,
    limit: int = 0,
    progress: Progress = SILENT,
    refusals: int = 0,
) -> dict:
    """The judge-eval record of reward model `model` on the labelled pairs in `data` (the first `limit`; 0 =
    all), each judged under a principle drawn from `constitution` (of kind `kind` when given), with
    `lengths` (accuracy when the chosen answer is the longer / the shorter one) and `settings`. Features are
    cached on disk, so every head on the same body, and a rerun, reads them again for free. With `refusals`,
    the pairs are instead that many of the file's chosen answers each set against a refusal phrasing training
    never draws (rlaif/reward/refusals.py): does the model prefer an answer to declining?"""
    pairs = load_labelled(data)[: limit or None]
    if refusals:
        pairs = refusal_pairs(pairs, refusals, split="eval")
    c = load_constitution(constitution)
    if kind and not any(p.kind == kind for p in c.principles):
        raise DataError(f"--kind {kind}: no principle of that kind in the constitution {constitution!r}")
    rm = RewardModel(model, pool, cache=True)
    judge = RewardJudge(rm, JudgeConfig(mode="reward", reward_model=model), model)
    result = evaluate(pairs, judge, c, 0, progress, kind=kind or None)
    chosen = [v["score_x"] for v in result["verdicts"]]
    rejected = [v["score_y"] for v in result["verdicts"]]
    labelled = [{"chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    result["lengths"] = accuracy_report(labelled, chosen, rejected)
    result["settings"] = {
        "data": data,
        "reward_model": model,
        "pairs": len(pairs),
        "mode": "reward",
        "kind": kind,
        "refusal_pairs": refusals or None,
    }
    return result
