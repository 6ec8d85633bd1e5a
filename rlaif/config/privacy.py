"""The [privacy] section: differentially private training (rlaif/privacy.py), applied by every training stage."""

from __future__ import annotations

from dataclasses import dataclass

from rlaif.checks import check, finite_numbers, one_of


@dataclass
class PrivacyConfig:
    epsilon: float = 0.0
    """The privacy budget of the whole run, (epsilon, delta)-DP with respect to each unit (record or user) of
    the data the training stages learn from; 0 = no differential privacy."""
    delta: float = 0.0
    """delta of the guarantee; 0 = 1 / (number of units), as the paper does."""
    clip: float = 1.0
    """Per-unit gradient norm bound C: each unit's gradient (all trainable parameters together) is scaled to at
    most C before the sum; the noise's deviation is noise_multiplier x C."""
    accountant: str = "prv"
    """"prv" (the PRV accountant, tight) or "rdp" (Renyi DP; looser), both from Opacus."""
    poisson: bool = True
    """Poisson sampling: each step takes each unit with probability batch / units (what the accountants assume);
    false: shuffled fixed batches (the guarantee is then heuristic; the report says so)."""
    unit: str = "record"
    """"record" (each example is a unit) or "user" (a record's `user` field: all of a user's records are one unit,
    sampled and clipped together; records without one are their own unit)."""
    trainings: int = 1
    """How many DP trainings of the same data the budget covers (e.g. one per round for 2 rounds: 2); the noise
    is solved so that this many trainings of the planned size spend exactly `epsilon`."""
    disjoint: bool = False
    """The training stages of a round learn from disjoint data (different users), as the paper's SFT / reward
    model / RL split: their budgets compose in parallel (the maximum), not in sequence (the sum)."""

    def __post_init__(self):
        finite_numbers(self, "privacy")
        check(self.epsilon >= 0, "privacy.epsilon", "must be >= 0 (0 = off)")
        check(0 <= self.delta < 1, "privacy.delta", "must be in [0, 1) (0 = 1 / units)")
        check(self.clip > 0, "privacy.clip", "must be > 0")
        one_of(self.accountant, ("prv", "rdp"), "privacy.accountant")
        one_of(self.unit, ("record", "user"), "privacy.unit")
        check(self.trainings >= 1, "privacy.trainings", "must be >= 1")

    @property
    def active(self) -> bool:
        return self.epsilon > 0
