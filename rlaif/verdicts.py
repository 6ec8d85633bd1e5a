"""Verdict arithmetic: from option probabilities (both orders, or two pointwise scores) to a typed verdict.
Pure; nothing here runs a model.

Pairwise (logprob, rationale) verdicts read both orders, (x, y) and (y, x), so position bias cancels:

    P(x better) = ( P(first | x, y) + (1 - P(first | y, x)) ) / 2

after subtracting, with calibration, the judge's mean log-odds for the first slot (contextual calibration,
arXiv:2102.09690). Pointwise verdicts compare two independent P(Yes) scores: P(x better) =
sigmoid(logit s_x - logit s_y), with no position at all.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass


def logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@dataclass(frozen=True)
class Verdict:
    """One judged pair (x, y) under one principle. Probabilities are of the *first slot* per order."""

    principle: str
    p_first_xy: float
    """P(first option) when x is shown first: P(x better) read in order (x, y)."""
    p_first_yx: float
    """P(first option) when y is shown first: P(y better) read in order (y, x)."""
    bias: float
    """Log-odds for the first slot subtracted from both orders (0 when calibration is off)."""
    p_x: float
    """Order-averaged (and calibrated) probability that x is better."""
    consistent: bool
    """Both orders pick the same winner, raw probabilities."""
    consistent_calibrated: bool
    """Both orders pick the same winner after removing the bias."""
    winner: str | None
    """"x", "y", or None for a dropped pair."""
    reason: str | None
    """Why the pair was dropped: "inconsistent", "uncertain" or "identical"; None when kept."""
    option_mass: float
    """Mean probability mass on the two option tokens; low values mean the judge wanted to say something else."""
    mode: str = "logprob"
    score_x: float | None = None
    """pointwise: P(Yes) for x alone (mean log-odds over an ensemble's principles)."""
    score_y: float | None = None
    rationale_xy: tuple[str, ...] = ()
    """rationale: what the judge wrote with x shown first, one per principle."""
    rationale_yx: tuple[str, ...] = ()
    judged_by: str = ""
    """reward mode: the reward model(s) that gave the verdict, "+"-joined for an ensemble ("prompted" for a
    principle the prompted judge scored)."""

    @property
    def kept(self) -> bool:
        return self.winner is not None

    def swapped(self) -> Verdict:
        """The same verdict with x and y exchanged."""
        return Verdict(
            self.principle,
            self.p_first_yx,
            self.p_first_xy,
            self.bias,
            1 - self.p_x,
            self.consistent,
            self.consistent_calibrated,
            {"x": "y", "y": "x", None: None}[self.winner],
            self.reason,
            self.option_mass,
            self.mode,
            self.score_y,
            self.score_x,
            self.rationale_yx,
            self.rationale_xy,
            self.judged_by,
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "kept": self.kept}


def position_bias(pairs: list[tuple[float, float]]) -> float:
    """Mean log-odds of the first slot over both orders of every pair: the judge's constant lean."""
    if not pairs:
        return 0.0
    return sum(logit(a) + logit(b) for a, b in pairs) / (2 * len(pairs))


def decide(
    principle: str,
    p_first_xy: float,
    p_first_yx: float,
    bias: float,
    min_confidence: float,
    require_consistent: bool,
    option_mass: float = 1.0,
) -> Verdict:
    """Combine the two orders into a verdict (pure)."""
    consistent = (p_first_xy > 0.5) == (p_first_yx < 0.5) and p_first_xy != 0.5
    cal_xy = sigmoid(logit(p_first_xy) - bias)
    cal_yx = sigmoid(logit(p_first_yx) - bias)
    consistent_cal = (cal_xy > 0.5) == (cal_yx < 0.5) and cal_xy != 0.5
    p_x = (cal_xy + (1 - cal_yx)) / 2
    winner, reason = ("x" if p_x > 0.5 else "y"), None
    if require_consistent and not consistent_cal:
        winner, reason = None, "inconsistent"
    elif max(p_x, 1 - p_x) < min_confidence or p_x == 0.5:
        winner, reason = None, "uncertain"
    return Verdict(
        principle, p_first_xy, p_first_yx, bias, p_x, consistent, consistent_cal, winner, reason, option_mass
    )


def decide_pointwise(
    principle: str, score_x: float, score_y: float, min_confidence: float, option_mass: float = 1.0
) -> Verdict:
    """Verdict from two independent P(Yes) scores: P(x better) = sigmoid(logit s_x - logit s_y) (pure).
    Position plays no part, so both "orders" are the same reading and always consistent."""
    p_x = sigmoid(logit(score_x) - logit(score_y))
    winner, reason = ("x" if p_x > 0.5 else "y"), None
    if max(p_x, 1 - p_x) < min_confidence or p_x == 0.5:
        winner, reason = None, "uncertain"
    return Verdict(
        principle,
        p_x,
        1 - p_x,
        0.0,
        p_x,
        True,
        True,
        winner,
        reason,
        option_mass,
        "pointwise",
        score_x,
        score_y,
    )


def decide_votes(
    principle: str,
    votes_xy: list[float],
    votes_yx: list[float],
    min_confidence: float,
    require_consistent: bool,
) -> Verdict:
    """Rationale verdict from parsed votes (1.0 = the first slot) in each order; no vote in an order means
    the judge never gave a parsable verdict there: dropped as "unparsed", never guessed (pure)."""
    if not votes_xy or not votes_yx:
        return Verdict(principle, 0.5, 0.5, 0.0, 0.5, False, False, None, "unparsed", 0.0, "rationale")
    v = decide(
        principle,
        sum(votes_xy) / len(votes_xy),
        sum(votes_yx) / len(votes_yx),
        0.0,
        min_confidence,
        require_consistent,
    )
    return dataclasses.replace(v, mode="rationale", option_mass=1.0)
