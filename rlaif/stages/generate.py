"""The generate stage: the round's model samples `generate.samples_per_prompt` responses to each of the
round's prompts (transformers, or vLLM's engine from the model pool), with their log-probs.

Writes responses.jsonl: one record per response (prompt id, sample index, text, token count, `finished`
(EOS vs. length limit), sampled-token log-probs, generator).

    rlaif run runs/demo --set generate.samples_per_prompt=4 --set generate.backend=vllm
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from rlaif.checks import check, finite_numbers, one_of

PRODUCES_MODEL = False
LOWER_ON_OOM = "generate.batch_size, generate.max_new_tokens or vllm.gpu_memory_utilization"


@dataclass
class GenerateConfig:
    backend: str = "auto"
    """"transformers", "vllm", or "auto" (vLLM when CUDA and vllm are both present, else transformers)."""
    samples_per_prompt: int = 2
    """Responses sampled per prompt; the judge compares them (see judge.pairing)."""
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    max_prompt_tokens: int = 512
    """Longer prompts are cut from the left (the start of the conversation); the count is reported."""
    batch_size: int = 32
    """Sequences decoded together (prompts x samples)."""

    def __post_init__(self):
        finite_numbers(self, "generate")
        one_of(self.backend, ("auto", "transformers", "vllm"), "generate.backend")
        check(self.samples_per_prompt >= 2, "generate.samples_per_prompt", "must be >= 2 to make pairs")
        check(
            self.temperature > 0,
            "generate.temperature",
            "must be > 0 (sampling; pairs need two different responses)",
        )
        check(0 < self.top_p <= 1, "generate.top_p", "must be in (0, 1]")
        check(self.max_new_tokens >= 1, "generate.max_new_tokens", "must be >= 1")
        check(self.max_prompt_tokens >= 8, "generate.max_prompt_tokens", "must be >= 8")
        check(self.batch_size >= 1, "generate.batch_size", "must be >= 1")


def outputs(figures: dict) -> list[str]:
    return ["responses.jsonl"]


def validate(run) -> None:
    from rlaif.generate.vllm_backend import resolve_backend

    resolve_backend(run.config.generate.backend, run.device)  # vLLM asked for but missing: say so now


def select_prompts(prompts: list[dict], per_round: int, seed: int, k: int) -> list[dict]:
    """The round's prompts: all of them, or a seeded sample that differs from round to round."""
    if per_round == 0 or per_round >= len(prompts):
        return prompts
    chosen = random.Random(f"{seed}:prompts:{k}").sample(range(len(prompts)), per_round)
    return [prompts[i] for i in sorted(chosen)]


def generator(r, settings: GenerateConfig):
    """(generator, backend name) sampling the round's current model with `settings` (the configured backend:
    vLLM's engine from the model pool, or transformers on the pool's model)."""
    from rlaif.generate.hf import TransformersGenerator
    from rlaif.generate.vllm_backend import VLLMGenerator, resolve_backend

    backend = resolve_backend(settings.backend, r.run.device)
    if backend == "vllm":
        return VLLMGenerator(r.pool.engine(r.model), r.pool.tokenizer(r.model), settings), backend
    model, tok = r.pool.model(r.model)
    return TransformersGenerator(r.model, settings, r.config.model, model=model, tokenizer=tok), backend


def run(r) -> dict:
    from rlaif.data import SCHEMA_VERSION, write_jsonl
    from rlaif.layout import portable

    cfg = r.config
    prompts = select_prompts(r.run.prompts, cfg.data.prompts_per_round, cfg.seed, r.k)
    r.progress.note(f"round {r.k}: generating with {r.model}")
    gen, backend = generator(r, cfg.generate)
    t0 = time.perf_counter()
    samples = gen.generate(
        [p["prompt"] for p in prompts], cfg.generate.samples_per_prompt, cfg.seed * 1000 + r.k, r.progress
    )
    seconds = time.perf_counter() - t0
    records = [
        {
            "schema": SCHEMA_VERSION,
            "round": r.k,
            "prompt_id": p["id"],
            "prompt": p["prompt"],
            "sample": j,
            "text": s.text,
            "tokens": s.tokens,
            "finished": s.finished,
            "logprobs": list(s.logprobs),
            "token_ids": list(s.token_ids),
            "generator": portable(r.model, r.run.dir),
        }
        for p, group in zip(prompts, samples, strict=True)
        for j, s in enumerate(group)
    ]
    write_jsonl(r.dir / "responses.jsonl", records)
    tokens = sum(x["tokens"] for x in records)
    return {
        "responses": len(records),
        "prompts": len(prompts),
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "truncated_prompts": gen.truncated_prompts,
        "finished_share": sum(x["finished"] for x in records) / len(records),
        "mean_tokens": tokens / len(records),
        "backend": backend,
        "seconds": seconds,
    }
