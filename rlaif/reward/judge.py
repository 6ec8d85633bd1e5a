"""A reward model in the judge's place (`judge.mode = "reward"`): verdicts from the Bradley-Terry
probability sigmoid(r_x - r_y)."""

from __future__ import annotations

import dataclasses
import json

from rlaif.progress import SILENT, Progress
from rlaif.reward.model import RewardModel
from rlaif.verdicts import decide_pointwise, sigmoid


def item_conversation(item: dict):
    """The conversation a judge item is about: its raw prompt (a user message or chat messages) when the item
    carries one, else the "User: ..." text the prompted judge reads, as one user message."""
    if "messages" in item:
        return item["messages"]
    return item["conversation"].removeprefix("User: ")


class RewardJudge:
    """A reward model in the judge's place (`judge.mode = "reward"`): each response is scored alone, and
    P(x better) = sigmoid(r_x - r_y), the Bradley-Terry probability the model was trained on. With an ensemble
    of principles, the rewards under each are averaged (only a principle-conditioned model reads them)."""

    mode = "reward"

    def __init__(self, model: RewardModel, config, name: str = ""):
        self.rm, self.config = model, config
        self.name = name or str(model.folder)
        """How verdicts name this model (`judged_by`): the name it was given by (a shipped head's, a path)."""
        self.truncated = 0
        self.scorer = None

    def _text(self, principle) -> str | None:
        return principle.question if self.rm.spec.principle_conditioned and principle is not None else None

    def scores(self, items: list[tuple], progress: Progress = SILENT) -> list[float]:
        """The reward of each (conversation, response, principle): the same interface as the prompted judge's
        pointwise log-odds."""
        return self.rm.rewards(
            [(c.removeprefix("User: ") if isinstance(c, str) else c, r, self._text(p)) for c, r, p in items],
            progress,
        )

    def score(self, conversation, response: str, principle=None) -> float:
        return self.scores([(conversation, response, principle)])[0]

    def judge(self, items: list[dict], progress: Progress = SILENT):

        members = [tuple(it.get("principles") or (it.get("principle"),)) for it in items]
        rows = []
        for it, ps in zip(items, members, strict=True):
            conv = item_conversation(it)
            for p in ps:
                rows += [(conv, it["x"], self._text(p)), (conv, it["y"], self._text(p))]
        # identical inputs (one principle's text for an unconditioned model) are scored once
        unique = list(dict.fromkeys(json.dumps(r, sort_keys=True) for r in rows))
        table = dict(
            zip(unique, self.rm.rewards([tuple(json.loads(u)) for u in unique], progress), strict=True)
        )
        rewards = iter(table[json.dumps(r, sort_keys=True)] for r in rows)
        out = []
        for ps in members:
            rx, ry = [], []
            for _ in ps:
                rx.append(next(rewards))
                ry.append(next(rewards))
            pid = "+".join(p.id for p in ps if p is not None) or "reward"
            v = decide_pointwise(
                pid, sigmoid(sum(rx) / len(rx)), sigmoid(sum(ry) / len(ry)), self.config.min_confidence
            )
            out.append(dataclasses.replace(v, mode="reward", judged_by=self.name))
        return out
