"""The generate stage: the round's model samples `generate.samples_per_prompt` responses to each of the
round's prompts (transformers, or vLLM's engine from the model pool), with their log-probs.

Writes responses.jsonl: one record per response (prompt id, sample index, text, token count, `finished`
(EOS vs. length limit), sampled-token log-probs, generator).

    rlaif run runs/demo --set generate.samples_per_prompt=4 --set generate.backend=vllm
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from rlaif.checks import check, finite_numbers, one_of

PRODUCES_MODEL = False
LOWER_ON_OOM = "generate.batch_size, generate.max_new_tokens or vllm.gpu_memory_utilization"


@dataclass
class GenerateConfig:
    backend: str = "auto"
    """"transformers", "vllm", "openai" (OpenAI-compatible servers: `generate.endpoints`), or "auto" (vLLM
    when CUDA and vllm are both present, else transformers)."""
    samples_per_prompt: int = 2
    """Responses sampled per prompt; the judge compares them (see judge.pairing)."""
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

    cfg = run.config.generate
    resolve_backend(cfg.backend, run.device)  # vLLM asked for but missing: say so now
    deferred = run.config.merge.defer  # rounds served as LoRA adapters: no weights are reloaded
    if cfg.backend == "openai" and cfg.sync == "reload" and not deferred and tied_embeddings(run.initial):
        from rlaif.checks import ConfigError

        raise ConfigError(
            "generate.sync",
            f"'reload' cannot update {run.initial}: its output layer shares the input embedding's weights "
            "(tie_word_embeddings), and vLLM's in-place reload (measured with vLLM 0.32) leaves that layer on "
            "the old weights. Set merge.defer = true (each round served as a LoRA adapter), or generate.sync = "
            "'none' and restart the servers on each round's model",
        )


def tied_embeddings(model_path: str) -> bool:
    """True when a local model's config ties its output layer to its input embedding."""
    import json
    from pathlib import Path

    config = Path(model_path) / "config.json"
    if not config.is_file():
        return False
    cfg = json.loads(config.read_text())
    return bool(cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings", False)))


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
    if backend == "openai":
        return fleet_generator(r, settings), backend
    if backend == "vllm":
        return VLLMGenerator(r.pool.engine(r.model), r.pool.tokenizer(r.model), settings), backend
    model, tok = r.pool.model(r.model)
    return TransformersGenerator(r.model, settings, r.config.model, model=model, tokenizer=tok), backend


def fleet_generator(r, settings: GenerateConfig):
    """The openai backend: a generator on the configured servers, which hold the round's model first."""
    from rlaif.endpoints import Fleet
    from rlaif.generate.openai_backend import OpenAIGenerator

    fleet = Fleet(
        settings.endpoints,
        settings.api_key_env,
        settings.concurrency,
        settings.retries,
        what="generate endpoint",
    )
    # round 1 samples the initial model, which the servers were started with; later rounds' models are
    # folders of the run, loaded by path
    from rlaif.lora import is_lora, served_name

    seconds, name = None, fleet.model_name(settings.api_model)
    if settings.sync == "reload" and is_lora(r.model):  # a round kept as an adapter: served as a LoRA
        name = served_name(r.model)
        seconds = fleet.load_lora(name, r.model)
        r.progress.note(f"{len(fleet.urls)} endpoint(s) loaded the adapter {r.model} in {seconds:.1f} s")
    elif settings.sync == "reload" and r.model != r.run.initial and r.run.loaded.get("endpoints") != r.model:
        seconds = fleet.reload(r.model)
        r.progress.note(f"{len(fleet.urls)} endpoint(s) loaded {r.model} in {seconds:.1f} s")
        r.run.loaded["endpoints"] = r.model
    if settings.sync == "none":
        check_served(fleet, r.model, settings.api_model)
    gen = OpenAIGenerator(fleet, name, r.model, r.pool.tokenizer(r.model), settings)
    gen.reload_seconds = seconds
    return gen


def check_served(fleet, model: str, name: str) -> None:
    """With sync = "none", every server must serve the round's model: the folder each says it serves (the
    `root` of its model list) must be this one, when it names a folder."""
    from pathlib import Path

    from rlaif.endpoints import EndpointError

    for url in fleet.urls:
        listed = fleet.get("/models", url).get("data", [])
        served = next((m for m in listed if not name or m["id"] == name), None)
        root = (served or {}).get("root") or ""
        if Path(root).is_dir() and Path(root).resolve() != Path(model).resolve():
            raise EndpointError(
                f"{url} serves {root}, but this round samples {model}: restart it with `vllm serve {model}` "
                "(generate.sync = 'none'), or let the runner load each round's model (generate.sync = 'reload')"
            )


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
        **(
            {
                "endpoints": gen.fleet.answered,
                "retried": gen.fleet.retried,
                "reload_seconds": gen.reload_seconds,
            }
            if backend == "openai"
            else {}
        ),
        "seconds": seconds,
    }
