"""The [generate] section (rlaif/stages/generate.py reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlaif.checks import check, finite_numbers, one_of


@dataclass
class GenerateConfig:
    backend: str = "auto"
    """"transformers", "vllm", "openai" (OpenAI-compatible servers: `generate.endpoints`), or "auto" (vLLM
    when CUDA and vllm are both present, else transformers)."""
    samples_per_prompt: int = 2
    """Responses sampled per prompt; the judge compares them (see judge.pairing)."""
    guided_samples: int = 0
    """Of each prompt's samples, how many are drawn under the constitution's `[guidance]` (a system prompt, and/or
    the reply's first words) for the principle kind that judges the prompt (judge.applicability "label" or
    "classifier"); the rest are sampled plainly. The judge compares them as usual, and DPO trains on the user's
    prompt alone, so a guided answer the judge prefers teaches its behaviour without the guidance (RLCD's
    contrast, arXiv:2307.12950; context distillation). 0 = none; prompts of a kind without guidance get plain
    samples."""
    temperature: float = 0.8
    """Sampling temperature (the sampled tokens' log-probs are recorded before it is applied)."""
    top_p: float = 0.95
    """Nucleus sampling: the smallest set of tokens whose probability reaches this."""
    max_new_tokens: int = 128
    """Longest response in tokens; a response cut here is recorded as unfinished."""
    max_prompt_tokens: int = 512
    """Longer prompts are cut from the left (the start of the conversation); the count is reported."""
    batch_size: int = 32
    """Sequences decoded together (prompts x samples)."""
    endpoints: list[str] = field(default_factory=list)
    """openai backend: the servers' base URLs, e.g. ["http://gpu1:8000/v1", "http://gpu2:8000/v1"]; requests
    go to the least busy one."""
    api_model: str = ""
    """openai backend: the model name the servers know; empty = the first model the first one lists."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai backend: the environment variable holding the API key (unset is fine for local servers)."""
    concurrency: int = 8
    """openai backend: requests in flight per endpoint."""
    retries: int = 3
    """openai backend: attempts after a failure that may pass (unreachable, timeout, HTTP 429/5xx), each on
    the least busy other endpoint first."""
    sync: str = "reload"
    """openai backend: how round k's model reaches the servers. "reload": each server loads the weights
    from the model's folder (a path it can read: a shared filesystem) before the round generates (vLLM
    started with VLLM_SERVER_DEV_MODE=1; the servers start on the run's initial model); "none": the servers
    serve what they were started with (restart them on each round's model yourself)."""

    def __post_init__(self):
        finite_numbers(self, "generate")
        one_of(self.backend, ("auto", "transformers", "vllm", "openai"), "generate.backend")
        check(
            self.backend != "openai" or bool(self.endpoints),
            "generate.endpoints",
            "is required when generate.backend = 'openai' (the servers' base URLs)",
        )
        check(self.concurrency >= 1, "generate.concurrency", "must be >= 1")
        check(self.retries >= 0, "generate.retries", "must be >= 0")
        one_of(self.sync, ("reload", "none"), "generate.sync")
        check(self.samples_per_prompt >= 2, "generate.samples_per_prompt", "must be >= 2 to make pairs")
        check(
            0 <= self.guided_samples < self.samples_per_prompt,
            "generate.guided_samples",
            f"must be in [0, generate.samples_per_prompt) = [0, {self.samples_per_prompt}): a guided answer is "
            "compared with plain ones",
        )
        check(
            self.temperature > 0,
            "generate.temperature",
            "must be > 0 (sampling; pairs need two different responses)",
        )
        check(0 < self.top_p <= 1, "generate.top_p", "must be in (0, 1]")
        check(self.max_new_tokens >= 1, "generate.max_new_tokens", "must be >= 1")
        check(self.max_prompt_tokens >= 8, "generate.max_prompt_tokens", "must be >= 8")
        check(self.batch_size >= 1, "generate.batch_size", "must be >= 1")
