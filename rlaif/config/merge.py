"""The [merge] section (rlaif/stages/merge.py reads it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MergeConfig:
    defer: bool = False
    """Keep each round's model as one composed LoRA adapter over the run's starting model instead of writing
    merged weights (an adapter's bytes per round; vLLM serves it with enable_lora); `rlaif merge RUN
    [--round K]` writes the merged model on demand."""

    scale: float = 1.0
    """Each round's trained change is folded in times this factor: W + scale * (alpha/r) B A. 1 merges the adapter
    as trained; above 1 extrapolates past it, away from the round's starting model (ExPO, arXiv:2404.16792, applied
    to the round's LoRA delta: a cheap way to move further along what training learned, at no training cost);
    below 1 interpolates back toward the starting model. Applies to merged and deferred rounds alike."""
