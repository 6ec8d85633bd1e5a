"""OpenAI-compatible backend: sampling from one or several servers (`vllm serve`, or a provider) through the
completions API, requests spread over them by rlaif/endpoints.py.

Prompts are chat-templated and truncated here and sent as token ids, the responses' tokens come back as ids
(vLLM's `return_tokens_as_token_ids`) with each sampled token's log-prob, and texts are decoded here: the
records are those of the transformers and vllm backends. Each prompt's request carries the seed the vllm
backend gives it, so a vLLM server samples what the offline engine samples (up to batching's float noise).
A server that returns token texts instead of ids (not vLLM) is read by re-tokenizing the text; its log-probs
are kept only when they line up with those tokens.

    rlaif run runs/demo --set generate.backend=openai \\
        --set 'generate.endpoints=["http://gpu1:8000/v1", "http://gpu2:8000/v1"]'
"""

from __future__ import annotations

from rlaif.generate import sample_from
from rlaif.generate.hf import encode_prompts
from rlaif.generate.vllm_backend import stop_ids
from rlaif.progress import SILENT, Progress


def _ids(tokens: list[str]) -> list[int] | None:
    """Token ids from vLLM's "token_id:123" token strings; None when the server sent token texts."""
    if tokens and all(t.startswith("token_id:") for t in tokens):
        return [int(t.split(":", 1)[1]) for t in tokens]
    return None


class OpenAIGenerator:
    """Generator protocol on a Fleet: one completions request (n samples) per prompt."""

    def __init__(self, fleet, model_name: str, model_path: str, tokenizer, config):
        self.fleet, self.model_name, self.tokenizer, self.config = fleet, model_name, tokenizer, config
        self.truncated_prompts = 0
        self.stop = stop_ids(model_path, tokenizer)
        self.reload_seconds = None
        """Seconds the servers took to load this model, when they had to."""

    def _one(self, job) -> list:
        ids, seed, n = job
        cfg, tok = self.config, self.tokenizer
        body = {
            "model": self.model_name,
            "prompt": ids,
            "n": n,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_tokens": cfg.max_new_tokens,
            "seed": seed,
            "logprobs": 0,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
        }
        choices = sorted(self.fleet.post("/completions", body)["choices"], key=lambda c: c["index"])
        samples = []
        for c in choices:
            lp = c.get("logprobs") or {}
            token_ids = _ids(lp.get("tokens") or [])
            logprobs = [x for x in lp.get("token_logprobs") or [] if x is not None]
            if token_ids is None:  # not vLLM: the text is all there is
                token_ids = tok(c["text"], add_special_tokens=False).input_ids
                if c.get("finish_reason") == "stop" and tok.eos_token_id is not None:
                    token_ids.append(tok.eos_token_id)
                if len(logprobs) != len(token_ids):
                    logprobs = []
            samples.append(sample_from(tok, self.stop, token_ids, c.get("finish_reason"), logprobs))
        return samples

    def generate(self, prompts: list, n: int, seed: int, progress: Progress = SILENT) -> list[list]:
        encoded, truncated = encode_prompts(self.tokenizer, prompts, self.config.max_prompt_tokens)
        self.truncated_prompts += truncated
        progress.stage("generate (openai)", len(prompts))
        jobs = [(ids, seed * 1_000_003 + i, n) for i, ids in enumerate(encoded)]
        return self.fleet.map(self._one, jobs, progress)
