"""Each principle judged by its own model: the constitution's `[reward_models]` names a reward model per
principle kind (or per principle), and a pair judged under a principle is scored by that principle's model.
An ensemble of principles averages its members' log-odds, each from the member's own model, so the verdict of
a pair moves with the principles drawn for it: editing or reweighting principle files steers the rounds.

The constitution's `[refusal_rewards]` adds a rule on top of the models: under a principle with a shift, a
response that declines the request (`is_refusal`) has its reward (log-odds) moved by the shift, so for example
a refusal of an ordinary request loses under helpfulness principles whatever the helpfulness model makes of it
(rule-based rewards beside a reward model, in the manner of Mu et al. 2024, arXiv:2411.01111). And
`judge.missing_eos_penalty` takes a number off the reward of a pair's response that was cut before it finished
(TRL's `missing_eos_penalty`), where the other finished; `judge.missing_eos_penalties` sets it per principle.

A principle with no model either stops the run before its first stage (`judge.unrouted = "stop"`, the
default) or is scored by the prompted pointwise judge (`judge.unrouted = "pointwise"`).

    rlaif run runs/demo --set judge.mode=reward          # the default constitution routes both kinds
"""

from __future__ import annotations

import dataclasses

from rlaif.progress import SILENT, Progress
from rlaif.reward.refusals import is_refusal
from rlaif.verdicts import decide_pointwise, logit, sigmoid

RULE = "refusal rule"
"""How a verdict's `judged_by` names the rule when it moved a refusal's reward: "smollm2-135m-helpful+refusal rule"."""
EOS_RULE = "unfinished penalty"
"""... and `judge.missing_eos_penalty` when it moved one side of a pair: "smollm2-135m-helpful+unfinished penalty"."""


class RoutedJudge:
    """The judge interface (`judge`, `scores`, `score`) over several member judges, each item or score routed
    by its principle. `routes`: principle id -> (name, judge); every judge scores responses alone (reward
    models, or the prompted judge in pointwise mode), so the members' log-odds can be averaged."""

    mode = "reward"
    scorer = None

    def __init__(self, routes: dict[str, tuple[str, object]], config, shifts: dict[str, float] | None = None):
        self.routes, self.config = routes, config
        self.min_confidence = config.min_confidence
        self.shifts = {k: v for k, v in (shifts or {}).items() if v}
        """principle id -> the shift to a refusal's reward under it (the constitution's `[refusal_rewards]`)."""
        self.eos_penalty = float(getattr(config, "missing_eos_penalty", 0.0) or 0.0)
        """Off a pair's unfinished response's reward (`judge.missing_eos_penalty`; pairs record `finished`) ..."""
        self.eos_penalties = dict(getattr(config, "missing_eos_penalties", None) or {})
        """... or the principle's own, by id or kind (`judge.missing_eos_penalties`)."""

    def _eos(self, principle) -> float:
        for key in (getattr(principle, "id", None), getattr(principle, "kind", None)):
            if key in self.eos_penalties:
                return float(self.eos_penalties[key])
        return self.eos_penalty

    def _shift(self, principle, response: str) -> float:
        s = self.shifts.get(getattr(principle, "id", None), 0.0)
        return s if s and is_refusal(response) else 0.0

    @property
    def truncated(self) -> int:
        return sum(getattr(j, "truncated", 0) for j in {id(j): j for _, j in self.routes.values()}.values())

    def _route(self, principle) -> tuple[str, object]:
        try:
            return self.routes[principle.id]
        except (KeyError, AttributeError):
            raise KeyError(f"no judge for principle {getattr(principle, 'id', principle)!r}") from None

    def judge(self, items: list[dict], progress: Progress = SILENT):
        """One verdict per item. Each member principle of an item is judged by its own model (one batched call
        per model); the members' log-odds for x and y are averaged before the verdict (as an ensemble)."""
        members = [tuple(it.get("principles") or (it.get("principle"),)) for it in items]
        by_judge: dict[int, tuple[object, list[tuple[int, int]], list[dict]]] = {}
        for i, (it, ps) in enumerate(zip(items, members, strict=True)):
            for m, p in enumerate(ps):
                _, judge = self._route(p)
                entry = by_judge.setdefault(id(judge), (judge, [], []))
                entry[1].append((i, m))
                entry[2].append({**it, "principles": (p,), "principle": p})
        got: dict[tuple[int, int], object] = {}
        for judge, keys, sub in by_judge.values():
            for key, v in zip(keys, judge.judge(sub, progress), strict=True):
                got[key] = v
        out = []
        for i, ps in enumerate(members):
            vs = [got[(i, m)] for m in range(len(ps))]
            names = [self._route(p)[0] for p in ps]
            sx = [self._shift(p, items[i]["x"]) for p in ps]
            sy = [self._shift(p, items[i]["y"]) for p in ps]
            if sx != sy:  # the rule moved one side (the report's "models" column counts these verdicts)
                names.append(RULE)
            fx, fy = items[i].get("finished") or (True, True)
            pen = [self._eos(p) for p in ps] if fx != fy else []  # two cut responses compare as they were
            if any(pen):  # the cut side's reward loses each member principle's penalty
                cut = [s - q for s, q in zip(sy if fx else sx, pen, strict=True)]
                sx, sy = (sx, cut) if fx else (cut, sy)
                names.append(EOS_RULE)
            if len(vs) == 1 and not sx[0] and not sy[0]:
                v = vs[0]
            else:
                lx = sum(logit(v.score_x) + s for v, s in zip(vs, sx, strict=True)) / len(vs)
                ly = sum(logit(v.score_y) + s for v, s in zip(vs, sy, strict=True)) / len(vs)
                v = decide_pointwise(
                    "+".join(p.id for p in ps), sigmoid(lx), sigmoid(ly), self.min_confidence
                )
            out.append(dataclasses.replace(v, mode="reward", judged_by="+".join(names)))
        return out

    def scores(self, items: list[tuple], progress: Progress = SILENT) -> list[float]:
        """The score of each (conversation, response, principle) by the principle's model: the reward, or the
        prompted judge's pointwise log-odds; plus the principle's shift where the response is a refusal."""
        out: list[float | None] = [None] * len(items)
        groups: dict[int, tuple[object, list[int]]] = {}
        for i, (_, _, p) in enumerate(items):
            _, judge = self._route(p)
            groups.setdefault(id(judge), (judge, []))[1].append(i)
        for judge, idx in groups.values():
            for i, s in zip(idx, judge.scores([items[i] for i in idx], progress), strict=True):
                out[i] = s + self._shift(items[i][2], items[i][1])
        return out

    def score(self, conversation, response: str, principle=None) -> float:
        return self.scores([(conversation, response, principle)])[0]
