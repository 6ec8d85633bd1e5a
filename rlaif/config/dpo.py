"""The [train] section: DPO and its family (rlaif/stages/dpo.py reads it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rlaif.checks import check, one_of
from rlaif.config.loop import LoopConfig


@dataclass
class DPOConfig(LoopConfig):
    loss: str = "sigmoid"
    """"sigmoid" (DPO), "ipo", "robust" (label-noise-robust DPO), "hinge" (SLiC), or "kto" (unpaired examples,
    rlaif/kto.py); see rlaif/losses.py."""
    beta: float = 0.1
    """Strength of the KL anchor to the reference; larger stays closer to it."""
    label_noise: float = 0.1
    """robust loss: the assumed share of preference labels that are flipped (epsilon), in [0, 0.5)."""
    label_smoothing: float = 0.0
    """sigmoid loss: conservative DPO, each pair's chosen response taken as the better with probability
    1 - label_smoothing (in [0, 0.5)): the loss is least at a finite margin, beta h = logit(1 - label_smoothing),
    instead of pushing it without end."""
    soft_labels: list[str] = field(default_factory=list)
    """sigmoid loss: the principle kinds or ids whose AI-judged pairs take as target the judge's own probability
    that the chosen response is the better (the pair's p_chosen), e.g. ["helpfulness"]; the loss is then least
    where the implicit reward margin beta h equals the judge's log-odds, so a pair the judge barely decided moves
    the policy little and a clear one far. An ensemble's pair when every member is named; other pairs, and pairs
    without a probability (offline, labelled by a person), take 1 - label_smoothing."""
    nll_weight: float = 0.0
    """Weight of a per-token NLL term on the chosen response (RPO), against chosen log-probs falling."""
    nll_weights: dict[str, float] = field(default_factory=dict)
    """The NLL term's weight by the principle that judged the pair, keyed like principle_weights (principle kinds
    or ids), e.g. {harmlessness = 0.3, helpfulness = 1.0}; a pair whose principle is not named gets nll_weight."""
    length_norm: bool = False
    """Use per-token mean log-probs instead of sums in the loss (no reward for length)."""
    reference: str = "previous"
    """"previous": the round's starting model (the previous round's merged model); "initial": the run's
    first model, for every round."""
    principle_weights: dict[str, float] = field(default_factory=dict)
    """Loss weight of a training pair by the principle that judged it: keys are principle kinds or principle ids
    (an id's weight wins over its kind's), e.g. {harmlessness = 2.0}; a pair whose principle is not named, or
    that has none (an imported pair may not), weighs 1; an ensemble's pair weighs its principles' mean. Not for
    kto (see kto_desirable_weight)."""
    tr_dpo_tau: int = 0
    """TR-DPO (arXiv:2404.09656): update the reference every tau optimizer steps; 0 = a fixed reference."""
    tr_dpo_alpha: float = 0.5
    """TR-DPO: ref <- alpha * policy + (1 - alpha) * ref at each update (1 = copy the policy)."""

    kto_examples: str = "pairs"
    """kto: what the round trains on: "pairs" (its training pairs unpaired: chosen desirable, rejected not) or
    "responses" (every judged response by its own pointwise or reward score, thresholded below)."""
    kto_desirable_above: float = 0.6
    """kto, "responses": a response scored at least this is desirable."""
    kto_undesirable_below: float = 0.4
    """kto, "responses": a response scored at most this is undesirable (those between are left out)."""
    kto_desirable_weight: float = 1.0
    """kto: lambda_D, the weight of desirable examples' loss."""
    kto_undesirable_weight: float = 1.0
    """kto: lambda_U; keep lambda_D n_D / (lambda_U n_U) in [1, 4/3] (a warning says when it is not)."""

    def __post_init__(self):
        super().__post_init__()
        one_of(self.loss, ("sigmoid", "ipo", "robust", "hinge", "kto"), "dpo.loss")
        one_of(self.kto_examples, ("pairs", "responses"), "dpo.kto_examples")
        check(
            0 <= self.kto_undesirable_below <= self.kto_desirable_above <= 1,
            "dpo.kto_desirable_above",
            "needs 0 <= dpo.kto_undesirable_below <= dpo.kto_desirable_above <= 1",
        )
        check(self.kto_desirable_weight > 0, "dpo.kto_desirable_weight", "must be > 0")
        check(self.kto_undesirable_weight > 0, "dpo.kto_undesirable_weight", "must be > 0")
        check(
            self.loss != "kto" or self.batch_size * self.grad_accum >= 2,
            "dpo.batch_size",
            "kto estimates its reference point from mismatched pairs within a step: batch_size x grad_accum "
            "must be >= 2",
        )
        for key, w in self.principle_weights.items():
            check(
                math.isfinite(w) and w > 0, f"dpo.principle_weights.{key}", f"must be a number > 0, got {w}"
            )
        check(
            self.loss != "kto" or not self.principle_weights,
            "dpo.principle_weights",
            "weighs paired losses; for kto set dpo.kto_desirable_weight and dpo.kto_undesirable_weight",
        )
        check(self.beta > 0, "dpo.beta", "must be > 0")
        check(0 <= self.label_noise < 0.5, "dpo.label_noise", "must be in [0, 0.5)")
        check(0 <= self.label_smoothing < 0.5, "dpo.label_smoothing", "must be in [0, 0.5)")
        for key, on in (
            ("label_smoothing", self.label_smoothing > 0),
            ("soft_labels", bool(self.soft_labels)),
        ):
            check(
                not on or self.loss == "sigmoid",
                f"dpo.{key}",
                f"applies to the sigmoid loss (DPO), not dpo.loss = {self.loss!r}",
            )
        check(self.nll_weight >= 0, "dpo.nll_weight", "must be >= 0")
        for key, w in self.nll_weights.items():
            check(math.isfinite(w) and w >= 0, f"dpo.nll_weights.{key}", f"must be a number >= 0, got {w}")
        check(
            self.loss != "kto" or not self.nll_weights, "dpo.nll_weights", "applies to paired losses, not kto"
        )
        one_of(self.reference, ("previous", "initial"), "dpo.reference")
        check(self.tr_dpo_tau >= 0, "dpo.tr_dpo_tau", "must be >= 0 (0 = off)")
        check(0 < self.tr_dpo_alpha <= 1, "dpo.tr_dpo_alpha", "must be in (0, 1]")
        check(
            self.tr_dpo_tau == 0 or self.reference == "previous",
            "dpo.tr_dpo_tau",
            "TR-DPO moves the round's own reference; it needs dpo.reference = 'previous'",
        )
