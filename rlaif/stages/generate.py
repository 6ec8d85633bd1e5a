"""The generate stage: the round's model samples `generate.samples_per_prompt` responses to each of the
round's prompts (transformers, or vLLM's engine from the model pool), with their log-probs.

Writes responses.jsonl: one record per response (prompt id, sample index, text, token count, `finished`
(EOS vs. length limit), sampled-token log-probs, generator).

    rlaif run runs/demo --set generate.samples_per_prompt=4 --set generate.backend=vllm
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import time
from pathlib import Path

from rlaif.checks import ConfigError
from rlaif.config.generate import GenerateConfig
from rlaif.data import SCHEMA_VERSION, write_jsonl
from rlaif.endpoints import EndpointError, Fleet
from rlaif.generate.hf import TransformersGenerator
from rlaif.generate.openai_backend import OpenAIGenerator
from rlaif.generate.vllm_backend import VLLMGenerator, resolve_backend
from rlaif.layout import portable
from rlaif.lora import is_lora
from rlaif.models import served_name
from rlaif.principles import Guidance
from rlaif.stages.judge import applicable_kinds

PRODUCES_MODEL = False
LOWER_ON_OOM = "generate.batch_size, generate.max_new_tokens or vllm.gpu_memory_utilization"


def outputs(figures: dict) -> list[str]:
    return ["responses.jsonl"]


def validate(run) -> None:

    cfg = run.config.generate
    resolve_backend(cfg.backend, run.device)  # vLLM asked for but missing: say so now
    validate_guidance(run)
    kinds = {p.get("kind") for p in run.prompts}
    for kind in run.config.data.prompts_per_kind:
        if kind not in kinds:
            raise ConfigError(
                f"data.prompts_per_kind.{kind}",
                f'no prompt in {run.prompts_path} has "kind": {kind!r} (its kinds: '
                f"{', '.join(sorted(map(repr, kinds - {None}))) or 'none'})",
            )
    deferred = run.config.merge.defer  # rounds served as LoRA adapters: no weights are reloaded
    if cfg.backend == "openai" and cfg.sync == "reload" and not deferred and tied_embeddings(run.initial):
        raise ConfigError(
            "generate.sync",
            f"'reload' cannot update {run.initial}: its output layer shares the input embedding's weights "
            "(tie_word_embeddings), and vLLM's in-place reload (measured with vLLM 0.32) leaves that layer on "
            "the old weights. Set merge.defer = true (each round served as a LoRA adapter), or generate.sync = "
            "'none' and restart the servers on each round's model",
        )


def validate_guidance(run) -> None:
    """generate.guided_samples needs a kind per prompt, guidance for at least one kind, and no rl stage (whose
    rollouts must be sampled from the policy as trained, without a system prompt) unless that stage takes guided
    responses as off-policy data (rl.off_policy)."""
    cfg = run.config
    if not cfg.generate.guided_samples:
        return
    if cfg.judge.applicability == "any":
        raise ConfigError(
            "generate.guided_samples",
            "needs judge.applicability = 'label' or 'classifier': a prompt's guidance is that of the principle "
            "kind that judges it",
        )
    if not run.constitution.guidance:
        raise ConfigError(
            "generate.guided_samples",
            f"the constitution {run.constitution.path or run.constitution.name} has no [guidance] table: add one, "
            'e.g. [guidance] harmlessness = "You are a safe assistant: refuse harmful requests."',
        )
    if "rl" in cfg.round.stages or "rl" in cfg.round.first_stages:
        if cfg.rl.off_policy == "refuse":
            raise ConfigError(
                "generate.guided_samples",
                "the rl stage trains on the sampled responses as the policy's own rollouts; guided ones are not: "
                'set it to 0 in runs with an rl stage, or set rl.off_policy ("shaped" or "likelihood") to train '
                "on them as off-policy data",
            )
        if cfg.rl.algorithm == "ppo":
            raise ConfigError(
                "generate.guided_samples",
                'guided responses are off-policy data for rl.algorithm "rloo" or "grpo"; PPO\'s critic and GAE '
                "assume the policy sampled every rollout",
            )


def tied_embeddings(model_path: str) -> bool:
    """True when a local model's config ties its output layer to its input embedding."""

    config = Path(model_path) / "config.json"
    if not config.is_file():
        return False
    cfg = json.loads(config.read_text())
    return bool(cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings", False)))


def select_prompts(
    prompts: list[dict], per_round: int, seed: int, k: int, per_kind: dict[str, int] | None = None
) -> list[dict]:
    """The round's prompts: all of them, or `per_round` of them, fresh each round: round k takes the k-th slice
    of the file's seeded shuffles laid end to end (a new shuffle each pass), so no prompt comes back before every
    prompt has had its turn. `per_kind` (data.prompts_per_kind) does the same for each kind it names, on that
    kind's prompts alone with its own shuffles; the other prompts follow `per_round`. File order is kept."""
    if per_kind:
        groups = {kind: [i for i, p in enumerate(prompts) if p.get("kind") == kind] for kind in per_kind}
        named = {i for ids in groups.values() for i in ids}
        rest = [i for i in range(len(prompts)) if i not in named]
        keep = {rest[j] for j in _slice(len(rest), per_round, f"{seed}", k)}
        for kind, ids in groups.items():
            keep.update(ids[j] for j in _slice(len(ids), per_kind[kind], f"{seed}:{kind}", k))
        return [p for i, p in enumerate(prompts) if i in keep]
    return [prompts[i] for i in _slice(len(prompts), per_round, f"{seed}", k)]


def round_prompts(round_) -> list[dict]:
    """The prompts round k takes (data.prompts_per_round, data.prompts_per_kind)."""
    data = round_.config.data
    return select_prompts(
        round_.run.prompts, data.prompts_per_round, round_.config.seed, round_.k, data.prompts_per_kind
    )


def _slice(n: int, per_round: int, seed: str, k: int) -> list[int]:
    """Round k's indices into n prompts, sorted (see select_prompts)."""
    if per_round == 0 or per_round >= n:
        return list(range(n))
    shuffles = {}

    def at(pos: int) -> int:
        lap, j = divmod(pos, n)
        if lap not in shuffles:
            shuffles[lap] = random.Random(f"{seed}:prompts:pass{lap}").sample(range(n), n)
        return shuffles[lap][j]

    chosen: set[int] = set()
    pos = (k - 1) * per_round
    while len(chosen) < per_round:  # a slice across two passes skips a prompt it already holds
        chosen.add(at(pos))
        pos += 1
    return sorted(chosen)


def generator(round_, settings: GenerateConfig):
    """(generator, backend name) sampling the round's current model with `settings` (the configured backend:
    vLLM's engine from the model pool, or transformers on the pool's model)."""

    backend = resolve_backend(settings.backend, round_.run.device)
    if backend == "openai":
        return fleet_generator(round_, settings), backend
    if backend == "vllm":
        return VLLMGenerator(
            round_.pool.engine(round_.model), round_.pool.tokenizer(round_.model), settings
        ), backend
    model, tok = round_.pool.model(round_.model)
    return TransformersGenerator(
        round_.model, settings, round_.config.model, model=model, tokenizer=tok
    ), backend


def fleet_generator(round_, settings: GenerateConfig):
    """The openai backend: a generator on the configured servers, which hold the round's model first."""

    fleet = Fleet(
        settings.endpoints,
        settings.api_key_env,
        settings.concurrency,
        settings.retries,
        what="generate endpoint",
    )
    # round 1 samples the initial model, which the servers were started with; later rounds' models are
    # folders of the run, loaded by path

    seconds, name = None, fleet.model_name(settings.api_model)
    if settings.sync == "reload" and is_lora(round_.model):  # a round kept as an adapter: served as a LoRA
        name = served_name(round_.model)
        seconds = fleet.load_lora(name, round_.model)
        round_.progress.note(
            f"{len(fleet.urls)} endpoint(s) loaded the adapter {round_.model} in {seconds:.1f} s"
        )
    elif (
        settings.sync == "reload"
        and round_.model != round_.run.initial
        and round_.run.loaded.get("endpoints") != round_.model
    ):
        seconds = fleet.reload(round_.model)
        round_.progress.note(f"{len(fleet.urls)} endpoint(s) loaded {round_.model} in {seconds:.1f} s")
        round_.run.loaded["endpoints"] = round_.model
    if settings.sync == "none":
        check_served(fleet, round_.model, settings.api_model)
    gen = OpenAIGenerator(fleet, name, round_.model, round_.pool.tokenizer(round_.model), settings)
    gen.reload_seconds = seconds
    return gen


def check_served(fleet, model: str, name: str) -> None:
    """With sync = "none", every server must serve the round's model: the folder each says it serves (the
    `root` of its model list) must be this one, when it names a folder."""

    for url in fleet.urls:
        listed = fleet.get("/models", url).get("data", [])
        served = next((m for m in listed if not name or m["id"] == name), None)
        root = (served or {}).get("root") or ""
        if Path(root).is_dir() and Path(root).resolve() != Path(model).resolve():
            raise EndpointError(
                f"{url} serves {root}, but this round samples {model}: restart it with `vllm serve {model}` "
                "(generate.sync = 'none'), or let the runner load each round's model (generate.sync = 'reload')"
            )


def guidance(round_, prompts: list[dict]) -> list[tuple[str, Guidance] | None]:
    """Per prompt, (principle kind, guidance) of the constitution for the kind that judges it
    (judge.applicability), or None where that kind has no guidance or the prompt is not among its `share`
    (`shared`)."""
    kinds = applicable_kinds(round_, [p["prompt"] for p in prompts], [p["id"] for p in prompts])
    c = round_.run.constitution
    guides = [(kind, c.guidance_for(kind)) if c.guidance_for(kind) else None for _, kind in kinds]
    return shared(guides, f"{round_.config.seed}:guidance:{round_.k}")


def shared(guides: list[tuple[str, Guidance] | None], seed: str) -> list[tuple[str, Guidance] | None]:
    """The guides with each kind's guidance kept on round(share x its prompts) of them, drawn with `seed`, and
    None on the rest of that kind's."""
    out = list(guides)
    for kind in sorted({g[0] for g in guides if g and g[1].share < 1}):
        at = [i for i, g in enumerate(guides) if g and g[0] == kind]
        keep = set(random.Random(f"{seed}:{kind}").sample(at, round(guides[at[0]][1].share * len(at))))
        for i in set(at) - keep:
            out[i] = None
    return out


def guided_prompt(prompt, guide: tuple[str, Guidance] | None):
    """The prompt (a user message or chat messages) with the guidance's system prompt as its system turn,
    before the prompt's own system text where it has one, and its prefix as the start of the assistant's reply;
    the prompt itself without guidance."""
    if guide is None:
        return prompt
    g = guide[1]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    own = [m["content"] for m in messages if m.get("role") == "system"]
    system = "\n\n".join([g.system, *own] if g.system else own)
    return [
        *([{"role": "system", "content": system}] if system else []),
        *(m for m in messages if m.get("role") != "system"),
        *([{"role": "assistant", "content": g.prefix}] if g.prefix else []),
    ]


def continued(prefix: str, tokenizer, sample) -> str:
    """A prefixed response: the prefix and the model's continuation, decoded again from its token ids, since a
    response's text alone has its leading space stripped ("can't" + " provide", not "can'tprovide")."""
    if not sample.token_ids:
        return prefix + sample.text
    return (prefix + tokenizer.decode(list(sample.token_ids), skip_special_tokens=True)).rstrip()


SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
"""The end of a sentence: a full stop, question or exclamation mark (and any closing quotes or brackets) before
a space or the end of the text; "3.5" is not one, nor a list item's number (`sentence_ends`)."""
LIST_NUMBER = re.compile(r"\s*\d+\.")


def sentence_ends(text: str) -> list[int]:
    """Where each sentence of `text` ends (the index after it): `SENTENCE_END`s, less the numbers that begin a
    line of a numbered list ("1. Mix the ...")."""
    return [
        m.end()
        for m in SENTENCE_END.finditer(text)
        if not LIST_NUMBER.fullmatch(text, text.rfind("\n", 0, m.start()) + 1, m.end())
    ]


def guided_sample(guidance: Guidance, tokenizer, sample):
    """A guided sample as the response it stands for: the prefix and its continuation (`continued`), ended after
    `guidance.sentences` sentences (`ended`)."""
    if guidance.prefix:
        sample = dataclasses.replace(sample, text=continued(guidance.prefix, tokenizer, sample))
    return ended(sample, guidance, tokenizer)


def ended(sample, guidance: Guidance, tokenizer):
    """The sample cut at the end of its `guidance.sentences`-th sentence and marked finished, with its token ids
    and log-probs up to the cut (no EOS token: the model did not sample one); the sample itself when that is off,
    when it has fewer sentences, or when it ends there anyway."""
    if not guidance.sentences:
        return sample
    ends = sentence_ends(sample.text)
    if len(ends) < guidance.sentences or ends[guidance.sentences - 1] >= len(sample.text):
        return sample
    text = sample.text[: ends[guidance.sentences - 1]]
    ids = list(sample.token_ids)
    if not ids:  # a backend that gives no token ids (an endpoint): the count re-tokenized
        tail = text.removeprefix(guidance.prefix)
        return dataclasses.replace(
            sample,
            text=text,
            finished=True,
            logprobs=(),
            tokens=len(tokenizer.encode(tail, add_special_tokens=False)),
        )

    def decoded(k: int) -> str:  # the text of the first k generated tokens, as the sample's text was made
        tail = tokenizer.decode(ids[:k], skip_special_tokens=True)
        return (guidance.prefix + tail).rstrip() if guidance.prefix else tail.strip()

    # the fewest tokens that reach the cut (it lies before the text's end, so before any EOS token)
    k = next((k for k in range(len(ids) + 1) if len(decoded(k)) >= len(text)), len(ids))
    return dataclasses.replace(
        sample,
        text=text,
        tokens=k,
        finished=True,
        token_ids=tuple(ids[:k]),
        logprobs=tuple(sample.logprobs[:k]),
    )


def guided_record(guide: tuple[str, Guidance]) -> dict:
    """What a guided response's record says of its guidance."""
    g = guide[1]
    return {
        "guidance": guide[0],
        **({"system": g.system} if g.system else {}),
        **({"prefix": g.prefix} if g.prefix else {}),
        **({"sentences": g.sentences} if g.sentences else {}),
    }


def run(round_) -> dict:

    cfg = round_.config
    prompts = round_prompts(round_)
    round_.progress.note(f"round {round_.k}: generating with {round_.model}")
    gen, backend = generator(round_, cfg.generate)
    t0 = time.perf_counter()
    n, g = cfg.generate.samples_per_prompt, cfg.generate.guided_samples
    samples = gen.generate([p["prompt"] for p in prompts], n - g, cfg.seed * 1000 + round_.k, round_.progress)
    guides = [None] * len(prompts)
    if g:
        guides = guidance(round_, prompts)
        # the last g samples of each prompt: under its kind's guidance, or plain where the kind has none
        more = gen.generate(
            [guided_prompt(p["prompt"], s) for p, s in zip(prompts, guides, strict=True)],
            g,
            cfg.seed * 1000 + round_.k + 500_000,
            round_.progress,
        )
        tok = round_.pool.tokenizer(round_.model)
        more = [
            [guided_sample(guide[1], tok, s) for s in group] if guide else group
            for group, guide in zip(more, guides, strict=True)
        ]
        samples = [a + b for a, b in zip(samples, more, strict=True)]
    seconds = time.perf_counter() - t0
    records = [
        {
            "schema": SCHEMA_VERSION,
            "round": round_.k,
            "prompt_id": p["id"],
            "prompt": p["prompt"],
            "sample": j,
            "text": s.text,
            "tokens": s.tokens,
            "finished": s.finished,
            "logprobs": list(s.logprobs),
            "token_ids": list(s.token_ids),
            "generator": portable(round_.model, round_.run.dir),
            **(guided_record(guide) if guide and j >= n - g else {}),
        }
        for p, group, guide in zip(prompts, samples, guides, strict=True)
        for j, s in enumerate(group)
    ]
    write_jsonl(round_.dir / "responses.jsonl", records)
    tokens = sum(x["tokens"] for x in records)
    return {
        "responses": len(records),
        "prompts": len(prompts),
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "truncated_prompts": gen.truncated_prompts,
        "finished_share": sum(x["finished"] for x in records) / len(records),
        **({"guided": sum("guidance" in x for x in records)} if g else {}),
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
