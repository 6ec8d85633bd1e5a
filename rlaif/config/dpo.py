"""The [train] section: DPO and its family (rlaif/stages/dpo.py reads it)."""

from __future__ import annotations

from dataclasses import dataclass

from rlaif.checks import check, one_of
from rlaif.config.loop import LoopConfig


@dataclass
class DPOConfig(LoopConfig):
    loss: str = "sigmoid"
    """"sigmoid" (DPO), "ipo", "robust" (label-noise-robust DPO) or "hinge" (SLiC); see rlaif/losses.py."""
    beta: float = 0.1
    """Strength of the KL anchor to the reference; larger stays closer to it."""
    label_noise: float = 0.1
    """robust loss: the assumed share of preference labels that are flipped (epsilon), in [0, 0.5)."""
    nll_weight: float = 0.0
    """Weight of a per-token NLL term on the chosen response (RPO), against chosen log-probs falling."""
    length_norm: bool = False
    """Use per-token mean log-probs instead of sums in the loss (no reward for length)."""
    reference: str = "previous"
    """"previous": the round's starting model (the previous round's merged model); "initial": the run's
    first model, for every round."""
    tr_dpo_tau: int = 0
    """TR-DPO (arXiv:2404.09656): update the reference every tau optimizer steps; 0 = a fixed reference."""
    tr_dpo_alpha: float = 0.5
    """TR-DPO: ref <- alpha * policy + (1 - alpha) * ref at each update (1 = copy the policy)."""

    def __post_init__(self):
        super().__post_init__()
        one_of(self.loss, ("sigmoid", "ipo", "robust", "hinge"), "dpo.loss")
        check(self.beta > 0, "dpo.beta", "must be > 0")
        check(0 <= self.label_noise < 0.5, "dpo.label_noise", "must be in [0, 0.5)")
        check(self.nll_weight >= 0, "dpo.nll_weight", "must be >= 0")
        one_of(self.reference, ("previous", "initial"), "dpo.reference")
        check(self.tr_dpo_tau >= 0, "dpo.tr_dpo_tau", "must be >= 0 (0 = off)")
        check(0 < self.tr_dpo_alpha <= 1, "dpo.tr_dpo_alpha", "must be in (0, 1]")
        check(
            self.tr_dpo_tau == 0 or self.reference == "previous",
            "dpo.tr_dpo_tau",
            "TR-DPO moves the round's own reference; it needs dpo.reference = 'previous'",
        )
