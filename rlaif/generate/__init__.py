"""Generators: sample n responses per prompt with the model's chat template.

The `Generator` protocol is the seam between backends (transformers now; vLLM on GPU later). Every
backend returns the same `Sample` records, so judging and training never know which one ran.
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


class Generator(Protocol):
    def generate(
        self, prompts: list[str], n: int, seed: int, progress: Progress = SILENT
    ) -> list[list[Sample]]:
        """n samples for each prompt (a user message), in prompt order."""
        ...


def make_generator(model_path: str, config, model_config) -> Generator:
    """The generator named by `generate.backend` for a resolved model path."""
    if config.backend == "transformers":
        from rlaif.generate.hf import TransformersGenerator

        return TransformersGenerator(model_path, config, model_config)
    raise ValueError(f"generate.backend: unknown backend {config.backend!r}")
