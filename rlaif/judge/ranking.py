"""Ranking n responses to one prompt from judged pairs: Bradley-Terry strengths (the MM algorithm), then
best vs. worst (a round's preference pair) or best alone (best-of-n sampling). Pure.

    python -c "from rlaif.judge.ranking import bradley_terry; print(bradley_terry(2, [(0, 1, 0.75)], prior=0))"
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from dataclasses import dataclass


def bradley_terry(n: int, comparisons: list[tuple[int, int, float]], prior: float = 0.1, iters: int = 200):
    """Log-strengths of n items from soft pairwise outcomes (i, j, P(i beats j)), by the MM algorithm
    (Hunter 2004). `prior` adds that many virtual half-wins per compared pair each way, so an item that
    won or lost everything keeps a finite score. Returns scores centred on 0; equal evidence, equal scores."""
    wins = [0.0] * n
    games: dict[tuple[int, int], float] = {}
    for i, j, p in comparisons:
        wins[i] += p + prior / 2
        wins[j] += 1 - p + prior / 2
        key = (min(i, j), max(i, j))
        games[key] = games.get(key, 0.0) + 1 + prior
    s = [1.0] * n
    for _ in range(iters):
        denom = [0.0] * n
        for (i, j), g in games.items():
            denom[i] += g / (s[i] + s[j])
            denom[j] += g / (s[i] + s[j])
        new = [wins[i] / denom[i] if denom[i] > 0 else s[i] for i in range(n)]
        total = math.exp(sum(math.log(v) for v in new) / n)
        new = [v / total for v in new]
        done = max(abs(a - b) for a, b in zip(new, s, strict=True)) < 1e-10
        s = new
        if done:
            break
    return [math.log(v) for v in s]


def all_pairs(n: int) -> list[tuple[int, int]]:
    """Every pair (i, j), i < j, of n responses: what a ranking judges."""
    return list(itertools.combinations(range(n), 2))


@dataclass(frozen=True)
class Ranking:
    scores: list[float]
    """Bradley-Terry log-strength of each response, centred on 0."""
    wins: list[float]
    """Pairs each response won outright (P > 0.5)."""
    order: list[int]
    """Response indices, best first; equal scores keep the lower index first."""

    @property
    def best(self) -> int:
        return self.order[0]

    @property
    def worst(self) -> int:
        return self.order[-1]

    @property
    def tied(self) -> bool:
        """Best and worst are indistinguishable: no preference to learn."""
        return self.scores[self.best] - self.scores[self.worst] < 1e-6


def rank(n: int, comparisons: list[tuple[int, int, float]]) -> Ranking:
    """Rank n responses from soft outcomes (i, j, P(i beats j))."""
    scores = bradley_terry(n, comparisons) if comparisons else [0.0] * n
    wins = [0.0] * n
    for i, j, p in comparisons:
        wins[i] += p > 0.5
        wins[j] += p < 0.5
    return Ranking(scores, wins, sorted(range(n), key=lambda i: (-scores[i], i)))


def best_vs_worst(group: list[dict], items: list[dict], verdicts: list) -> tuple[dict, object, list[dict]]:
    """From every judged pair of one prompt's responses: the judged pair of the best- and worst-ranked
    responses as (item, verdict) with x = best, and the ranking as records. Equal scores give no pair
    (reason "tie"); a direct verdict that contradicts the ranking gives none either ("rank-disagrees")."""
    r = rank(
        len(group), [(it["pair"][0], it["pair"][1], v.p_x) for it, v in zip(items, verdicts, strict=True)]
    )
    ranking = [
        {"sample": group[i]["sample"], "score": round(r.scores[i], 6), "wins": r.wins[i]}
        for i in range(len(group))
    ]
    best, worst = r.best, r.worst
    q = next(q for q, it in enumerate(items) if set(it["pair"]) == {best, worst})
    it, v = dict(items[q]), verdicts[q]
    if it["pair"] != (best, worst):  # orient the pair so that x is the best-ranked response
        it.update(x=it["y"], y=it["x"], finished=it["finished"][::-1], samples=it["samples"][::-1])
        it["pair"] = (best, worst)
        v = v.swapped()
    if r.tied:
        v = dataclasses.replace(v, winner=None, reason="tie")
    elif v.kept and v.winner != "x":
        v = dataclasses.replace(v, winner=None, reason="rank-disagrees")
    return it, v, ranking


def best_of_n(
    judge,
    constitution,
    prompts: list[str],
    candidates: list[list[str]],
    seed: int = 0,
    finished: list[list[bool]] | None = None,
):
    """For each prompt, the candidate the judge ranks first (every pair judged, Bradley-Terry), with the
    scores. Returns [(best_index, scores)]; the principle(s) are drawn per prompt, seeded. `finished`: whether
    each candidate ended on its own, for the judge's `missing_eos_penalty` (None: all did)."""

    items, spans = [], []
    for i, (prompt, cands) in enumerate(zip(prompts, candidates, strict=True)):
        principles = constitution.sample_k(
            random.Random(f"{seed}:best-of-n:{i}"), judge.config.principles_per_pair
        )
        first = len(items)
        for a, b in all_pairs(len(cands)):
            items.append(
                {
                    "conversation": f"User: {prompt}",
                    "x": cands[a],
                    "y": cands[b],
                    "principles": principles,
                    "pair": (a, b),
                    "finished": (finished[i][a], finished[i][b]) if finished else (True, True),
                }
            )
        spans.append((first, len(items)))
    verdicts = judge.judge(items)
    out = []
    for (first, end), cands in zip(spans, candidates, strict=True):
        r = rank(len(cands), [(*items[q]["pair"], verdicts[q].p_x) for q in range(first, end)])
        out.append((r.best, r.scores))
    return out
