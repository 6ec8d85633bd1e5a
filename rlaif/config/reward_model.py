"""The [reward_model] section (rlaif/stages/reward_model.py reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlaif.checks import check, finite_numbers


@dataclass
class RewardModelConfig:
    human: list[str] = field(default_factory=list)
    """Human-labelled preference files (TRL format), relative to the run folder or absolute."""
    human_share: float = 1.0
    """Human pairs per AI-judged pair in each round's training set (0 = AI labels only); all of them when
    there are fewer."""
    heldout: str = ""
    """A human-labelled file the reward model is measured on each round (never trained on)."""
    principle_conditioned: bool = False
    """Put the principle's question into the reward model's input (AI-judged pairs carry theirs)."""
    max_length: int = 512
    """Conversation + response tokens the reward model reads; the conversation is cut from the left."""
    margin: float = 0.0
    """Bradley-Terry margin: the loss asks r(chosen) - r(rejected) to exceed it."""
    centring: float = 0.01
    """Reward centring weight (arXiv:2312.09244): keeps rewards near 0 on average, comparable across rounds."""
    batch_size: int = 8
    """Sequences per forward pass when computing features."""

    def __post_init__(self):
        finite_numbers(self, "reward_model")
        check(self.human_share >= 0, "reward_model.human_share", "must be >= 0")
        check(self.max_length >= 16, "reward_model.max_length", "must be >= 16")
        check(self.margin >= 0, "reward_model.margin", "must be >= 0")
        check(self.centring >= 0, "reward_model.centring", "must be >= 0")
        check(self.batch_size >= 1, "reward_model.batch_size", "must be >= 1")
