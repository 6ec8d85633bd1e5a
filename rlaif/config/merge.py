"""The [merge] section (rlaif/stages/merge.py reads it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MergeConfig:
    defer: bool = False
    """Keep each round's model as one composed LoRA adapter over the run's starting model instead of writing
    merged weights (an adapter's bytes per round; vLLM serves it with enable_lora); `rlaif merge RUN
    [--round K]` writes the merged model on demand."""
