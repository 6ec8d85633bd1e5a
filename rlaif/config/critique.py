"""The [critique] section (rlaif/stages/critique.py reads it)."""

from __future__ import annotations

from dataclasses import dataclass

from rlaif.checks import check, finite_numbers, one_of


@dataclass
class CritiqueConfig:
    passes: int = 1
    """Critique-revision passes per prompt, each under a newly drawn principle."""
    principle_kind: str = ""
    """Draw only principles of this kind ("harmlessness" for red-team prompts, as CAI does); "" = any."""
    few_shot: int = 2
    """How many of the constitution's few-shot examples precede each critique and revision request."""
    temperature: float = 0.7
    """Sampling temperature of critiques and revisions (the initial response uses generate.temperature)."""
    max_new_tokens: int = 160
    """Longest critique or revision in tokens; a revision cut at this limit is dropped as too long."""
    max_prompt_tokens: int = 2048
    """Longest critique/revision prompt (few-shot examples + conversation); longer ones lose their start."""
    prompts: str = ""
    """The prompts to critique and revise: JSON Lines of {"prompt"} (relative to the run folder), all of them
    each round; empty = the round's prompts (data.prompts, data.prompts_per_round). CAI uses red-team prompts."""
    helpful_prompts: str = ""
    """Optional JSON Lines of {"prompt"} (relative to the run folder): the model's own answers to them join
    the SFT data unrevised, as CAI does to keep helpfulness."""
    helpful_per_round: int = 0
    """Helpful prompts sampled per round (seeded); 0 = all of them."""
    pairs: bool = False
    """Also emit (revision preferred over the initial response) pairs into the round's preferences (the
    preferences stage reads them), as the alignment-handbook's CAI recipe does for DPO."""

    def __post_init__(self):
        finite_numbers(self, "critique")
        check(1 <= self.passes <= 8, "critique.passes", "must be in [1, 8]")
        one_of(self.principle_kind, ("", "harmlessness", "helpfulness"), "critique.principle_kind")
        check(self.few_shot >= 0, "critique.few_shot", "must be >= 0")
        check(self.temperature > 0, "critique.temperature", "must be > 0")
        check(self.max_new_tokens >= 1, "critique.max_new_tokens", "must be >= 1")
        check(self.max_prompt_tokens >= 64, "critique.max_prompt_tokens", "must be >= 64")
        check(self.helpful_per_round >= 0, "critique.helpful_per_round", "must be >= 0")
