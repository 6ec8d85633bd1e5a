"""The [rlhb] section (rlaif/stages/discriminator.py and the rl stage's "discriminator" / "behaviour" rewards)."""

from __future__ import annotations

from dataclasses import dataclass

from rlaif.checks import check, finite_numbers, one_of

DESIRED = "Many readers viewed it, many clicked through, many liked it, no one disliked it."


@dataclass
class RLHBConfig:
    behaviour: str = "feedback/behaviour.jsonl"
    """The logged (query, response, behaviour text) triplets (`rlaif feedback import`); relative to the run."""
    desired: str = DESIRED
    """The behaviour the generator is asked for and rewarded towards (a text in the log's own words)."""
    mode: str = "adversarial"
    """"adversarial" (RLHB: a discriminator of real vs generated triplets is the reward) or "predictor" (RLHB-C:
    a pointwise predictor of each behaviour count, combined as (likes - dislikes) / (views + clicks))."""
    demo_share: float = 0.0
    """The share of a round's generations, the best by the previous round's discriminator, kept as online
    demonstrations (labelled real). The paper saw the discriminator collapse at 0.5."""
    collapse: float = 0.95
    """Stop when held-out real and generated triplets both score above this mean P(real) (a collapsed reward)."""
    heldout_share: float = 0.2
    """The share of logged records (and of generations) held out to measure the discriminator."""
    max_records: int = 0
    """Use at most this many logged records (seeded sample); 0 = all."""
    max_length: int = 384
    """Tokens of query + behaviour + response the discriminator reads; the start is cut to fit."""
    l2: float = 1.0
    """The discriminator head's L2 penalty (standardised features)."""

    def __post_init__(self):
        finite_numbers(self, "rlhb")
        one_of(self.mode, ("adversarial", "predictor"), "rlhb.mode")
        check(bool(self.desired.strip()), "rlhb.desired", "must be a behaviour text")
        check(0 <= self.demo_share < 1, "rlhb.demo_share", "must be in [0, 1)")
        check(0.5 < self.collapse <= 1, "rlhb.collapse", "must be in (0.5, 1]")
        check(0 < self.heldout_share < 1, "rlhb.heldout_share", "must be in (0, 1)")
        check(self.max_records >= 0, "rlhb.max_records", "must be >= 0 (0 = all)")
        check(self.max_length >= 32, "rlhb.max_length", "must be >= 32")
        check(self.l2 > 0, "rlhb.l2", "must be > 0")
