"""Generators: sample n responses per prompt with the model's chat template.

The `Generator` protocol is the seam between backends: `hf.py` (transformers) and `vllm_backend.py` (vLLM's
offline engine in its own process). Both return the same `Sample` records, so judging and training never
know which one ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from rlaif.progress import SILENT, Progress


@dataclass(frozen=True)
class Sample:
    text: str
    tokens: int
    """Generated tokens, the EOS token excluded."""
    finished: bool
    """True if the response ended with EOS; False if it hit max_new_tokens."""
    logprobs: tuple[float, ...] = ()
    """The generating model's own log-probs (raw, before temperature and top-p) of each generated token,
    the EOS token included when the response finished: `tokens + finished` values."""
    token_ids: tuple[int, ...] = ()
    """The generated token ids, the EOS token included when the response finished (what RL trains on: the
    text may not re-tokenize to the same ids)."""


class Generator(Protocol):
    def generate(self, prompts: list, n: int, seed: int, progress: Progress = SILENT) -> list[list[Sample]]:
        """n samples for each prompt (a user message, or chat messages ending before the assistant's turn), in
        prompt order."""
        ...


def sample_from(
    tokenizer, stop: set[int], token_ids: list[int], reason: str | None, logprobs: list
) -> Sample:
    """A Sample from an engine's output: the tokens up to the first stop token (kept in `token_ids`, with its
    log-prob), the text decoded here, `finished` when a stop token came or the engine says it stopped."""
    end = next((k for k, t in enumerate(token_ids) if t in stop), None)
    kept = list(token_ids if end is None else token_ids[:end])
    ids = kept + ([token_ids[end]] if end is not None else [])
    return Sample(
        text=tokenizer.decode(kept, skip_special_tokens=True).strip(),
        tokens=len(kept),
        finished=end is not None or reason == "stop",
        logprobs=tuple(logprobs[: len(ids)]),
        token_ids=tuple(ids),
    )
