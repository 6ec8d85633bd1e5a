"""The [judge] section (rlaif/stages/judge.py and rlaif/judge/ read it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rlaif.checks import check, finite_numbers, one_of


@dataclass
class JudgeConfig:
    backend: str = "auto"
    """"transformers", "vllm", "openai" (an OpenAI-compatible server, e.g. `vllm serve`), or "auto" (vLLM when
    CUDA and vllm are both present, else transformers)."""
    base_url: str = ""
    """openai backend: the server's base URL, e.g. http://127.0.0.1:8000/v1."""
    endpoints: list[str] = field(default_factory=list)
    """openai backend: several servers' base URLs (with base_url, if set): requests go to the least busy."""
    concurrency: int = 8
    """openai backend: requests in flight per endpoint."""
    retries: int = 3
    """openai backend: attempts after a failure that may pass (unreachable, timeout, HTTP 429/5xx)."""
    api_model: str = ""
    """openai backend: the model name the server knows; empty = the first model it lists."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai backend: the environment variable holding the API key (unset is fine for a local server)."""
    top_logprobs: int = 20
    """openai backend: top log-probs asked for; an option outside them counts as probability ~0."""
    constitution: str = "default"
    """A constitution name (constitution/<name>.toml) or a path to one (relative to the run folder where it is
    there, else to the working directory)."""
    reward_model: str = ""
    """mode "reward": one reward model for every principle, a folder (`rlaif rm train`) or a shipped one, e.g.
    "smollm2-135m-harmless". Empty: each principle is judged by the model the constitution's `[reward_models]`
    names for its kind or id."""
    unrouted: str = "stop"
    """mode "reward" without `reward_model`: a principle the constitution names no reward model for stops the
    run before its first stage ("stop"), or is judged by the prompted judge in pointwise mode ("pointwise")."""
    mode: str = "pointwise"
    """"pointwise" (each response scored alone by P(Yes) to the principle's `check` question; no position
    bias), "logprob" (pairwise, answer-option probabilities in both orders), "rationale" (pairwise, the
    judge reasons first and its verdict line is parsed strictly) or "reward" (a Bradley-Terry reward model,
    `judge.reward_model`, scores each response). See `rlaif judge-eval` to compare them."""
    principles_per_pair: int = 1
    """Judge each pair under this many distinct sampled principles and average them (an ensemble)."""
    pairing: str = "rank"
    """With n > 2 responses per prompt: "rank" compares every pair, ranks the responses (Bradley-Terry) and
    emits best vs worst; "disjoint" judges samples 0-1, 2-3, ... as separate pairs."""
    harden: bool = True
    """Defuse template markers and special-token strings inside responses before judging (prompt injection)."""
    rationale_tokens: int = 128
    """rationale mode: the most tokens the judge may write before its verdict line."""
    min_confidence: float = 0.55
    """Keep a pair only if the order-averaged probability of the winner is at least this."""
    require_consistent: bool = True
    """Drop pairs whose two orders pick different winners (after calibration, when on)."""
    calibrate: bool = True
    """Remove the judge's average position bias (its mean log-odds for the first slot over the round)
    before the consistency check, as in contextual calibration (arXiv:2102.09690)."""
    batch_size: int = 8
    """Judge prompts (or reward-model sequences) per forward pass."""
    max_length: int = 1024
    """Judge prompt tokens; longer conversations are cut from the left, responses are kept whole."""
    applicability: str = "any"
    """Which principles may judge a prompt's pairs: "any" (drawn from the whole constitution), "classifier"
    (`judge.prompt_classifier` flags harmful requests: harmlessness principles judge those, helpfulness
    principles the rest; rlaif/applicability.py) or "label" (the prompt file's own `kind` of each prompt:
    "harmful" or "harmlessness" -> harmlessness principles, "benign" or "helpfulness" -> helpfulness ones)."""
    prompt_classifier: str = "smollm2-135m-harmful-prompt"
    """applicability "classifier": a classifier folder (`rlaif prompt-classifier train`) or a shipped one."""
    missing_eos_penalty: float = 0.0
    """mode "reward": subtracted from the reward (log-odds) of a response cut at `generate.max_new_tokens` before
    it finished, when the judge compares a round's pairs (TRL's `missing_eos_penalty`): a complete answer beats one
    that trails off unless the model prefers the unfinished one by more than this. 0 = off."""
    missing_eos_penalties: dict[str, float] = field(default_factory=dict)
    """The penalty by the principle that judges the pair, keyed by principle kind or id (an id wins over its kind);
    a principle not named gets `missing_eos_penalty`. E.g. {helpfulness = 3.0}: a cut answer to an ordinary
    request loses, while under harmlessness a cut refusal still beats a finished compliance."""

    def __post_init__(self):
        finite_numbers(self, "judge")
        one_of(self.backend, ("auto", "transformers", "vllm", "openai"), "judge.backend")
        check(
            self.backend != "openai" or bool(self.base_url or self.endpoints),
            "judge.base_url",
            "(or judge.endpoints) is required when judge.backend = 'openai'",
        )
        check(self.concurrency >= 1, "judge.concurrency", "must be >= 1")
        check(self.retries >= 0, "judge.retries", "must be >= 0")
        check(self.top_logprobs >= 2, "judge.top_logprobs", "must be >= 2")
        one_of(self.mode, ("pointwise", "logprob", "rationale", "reward"), "judge.mode")
        one_of(self.unrouted, ("stop", "pointwise"), "judge.unrouted")
        one_of(self.applicability, ("any", "classifier", "label"), "judge.applicability")
        one_of(self.pairing, ("rank", "disjoint"), "judge.pairing")
        check(self.principles_per_pair >= 1, "judge.principles_per_pair", "must be >= 1")
        check(self.rationale_tokens >= 8, "judge.rationale_tokens", "must be >= 8")
        check(0.5 <= self.min_confidence < 1, "judge.min_confidence", "must be in [0.5, 1)")
        check(self.batch_size >= 1, "judge.batch_size", "must be >= 1")
        check(self.max_length >= 64, "judge.max_length", "must be >= 64")
        check(self.missing_eos_penalty >= 0, "judge.missing_eos_penalty", "must be >= 0")
        for key, v in self.missing_eos_penalties.items():
            check(
                isinstance(v, (int, float)) and math.isfinite(v) and v >= 0,
                f"judge.missing_eos_penalties.{key}",
                f"must be a number >= 0, got {v!r}",
            )
        check(
            not (self.missing_eos_penalty or any(self.missing_eos_penalties.values()))
            or self.mode == "reward",
            "judge.missing_eos_penalty",
            "applies to reward models' scores: set judge.mode = 'reward' (or the penalties to 0)",
        )
