"""The [review] section (rlaif/stages/review.py and `rlaif review` read it)."""

from __future__ import annotations

from dataclasses import dataclass

from rlaif.checks import one_of

REVIEW_ORDERS = ("uncertain", "disagreement", "random", "file")


@dataclass
class ReviewConfig:
    reviewer: str = ""
    """The name written with each label; empty = the login name ($USER)."""
    order: str = "uncertain"
    """The order `rlaif review` shows pairs in: "uncertain" (the judge's least sure verdicts first, where a
    person's label is worth most), "disagreement" (the judge's two readings disagreed most), "random", "file"."""

    def __post_init__(self):
        one_of(self.order, REVIEW_ORDERS, "review.order")
