"""The [sft] section (rlaif/stages/sft.py reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from rlaif.checks import check
from rlaif.config.loop import LoopConfig


@dataclass
class SFTConfig(LoopConfig):
    SECTION: ClassVar[str] = "sft"

    learning_rate: float = 2e-4
    """AdamW peak learning rate."""
    epochs: int = 2
    """Passes over the SFT examples."""
    revisions: bool = True
    """Train on the round's kept revisions (when the round ran the critique stage)."""
    helpful: bool = True
    """Train on the model's answers to the critique stage's helpful prompts (helpful.jsonl)."""
    data: list[str] = field(default_factory=list)
    """SFT files in a TRL format (prompt/completion or messages JSONL, a datasets folder or a hub name);
    relative paths are relative to the run folder."""
    data_per_round: int = 0
    """Records drawn (seeded, differently each round) from `data` per round; 0 = all of them."""

    def __post_init__(self):
        super().__post_init__()
        check(self.data_per_round >= 0, "sft.data_per_round", "must be >= 0")
