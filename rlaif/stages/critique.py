"""The critique stage: the supervised phase of Constitutional AI (Bai et al., arXiv:2212.08073, section 3).

For each of the round's prompts the model samples a response; then, for `critique.passes` passes, a principle
is drawn (seeded per prompt and pass, by the constitution's weights), the model is asked for a critique of the
current response under the principle's `critique` request, and then for a revision under its `revision`
request. The constitution's few-shot examples (`critique_examples`, by default
constitution/templates/critique-examples.toml: data to edit) come first as earlier chat turns. Each pass starts
a fresh conversation from the current text, so prompts stay short and a dropped revision leaves the text as
it was. Every step is one batched call to the generator backend (transformers or vLLM) over all prompts.

A revision is dropped, the reason recorded, when it is
- "empty": nothing but whitespace;
- "unchanged": the current text again (whitespace and case aside);
- "too_long": it did not end within `critique.max_new_tokens` (it was cut mid-answer);
- "copies_example": it repeats a few-shot example's revision (holds its first 40 characters), as a small
  model does when it continues the examples instead of revising its own answer.
The final text is the last kept revision; a prompt without one has `final` null and is not trained on.

CAI also fine-tunes on the model's own answers to helpful prompts, so the revisions do not cost helpfulness:
`critique.helpful_prompts` names such a prompt file; its sampled answers go to helpful.jsonl for the sft stage.

Writes revisions.jsonl (one record per prompt: the initial response, each pass's principle, critique and
revision with its drop reason, the final text) and helpful.jsonl (when helpful prompts are set).

    rlaif run runs/cai                      # round 1: critique -> sft -> merge; later rounds DPO
    rlaif revisions runs/cai --principle hate
"""

from __future__ import annotations

import dataclasses
import random
import re
import time

from rlaif.data import SCHEMA_VERSION, load_prompts, write_jsonl
from rlaif.layout import portable
from rlaif.principle_checks import missing_requests
from rlaif.principles import PrincipleError, Problem
from rlaif.stages.generate import generator, round_prompts, select_prompts

PRODUCES_MODEL = False
LOWER_ON_OOM = "generate.batch_size, critique.max_new_tokens or critique.max_prompt_tokens"

DROP_REASONS = ("empty", "unchanged", "too_long", "copies_example")


# -- prompts and drop rules (pure) ------------------------------------------------------------------------


def few_shot_turns(examples) -> list[dict]:
    """The few-shot examples as earlier chat turns: prompt, response, critique request, critique, revision
    request, revision."""
    turns = []
    for e in examples:
        turns += [
            {"role": "user", "content": e.prompt},
            {"role": "assistant", "content": e.response},
            {"role": "user", "content": e.critique_request},
            {"role": "assistant", "content": e.critique},
            {"role": "user", "content": e.revision_request},
            {"role": "assistant", "content": e.revision},
        ]
    return turns


def critique_messages(examples, prompt: str, response: str, principle) -> list[dict]:
    """The conversation that asks for a critique of `response` under `principle`; the model's next turn is
    the critique."""
    return [
        *few_shot_turns(examples),
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": response},
        {"role": "user", "content": principle.critique},
    ]


def revision_messages(examples, prompt: str, response: str, principle, critique: str) -> list[dict]:
    """The critique conversation continued with the critique and the revision request; the model's next turn
    is the revision."""
    return [
        *critique_messages(examples, prompt, response, principle),
        {"role": "assistant", "content": critique},
        {"role": "user", "content": principle.revision},
    ]


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


COPY_CHARS = 40
"""A revision holding the first this-many characters of a few-shot example's revision copied the example."""


def drop_reason(revision: str, finished: bool, current: str, examples=()) -> str | None:
    """Why a revision is not kept ("empty", "unchanged", "too_long", "copies_example"), or None when it is
    kept. Checked in that order; texts are compared with whitespace and case aside."""
    text = _normal(revision)
    if not text:
        return "empty"
    if text == _normal(current):
        return "unchanged"
    if not finished:
        return "too_long"
    if any(_normal(e.revision)[:COPY_CHARS] in text for e in examples):
        return "copies_example"
    return None


def candidates(constitution, kind: str = "") -> tuple[list, list[float]]:
    """The principles the critique stage draws from (of `kind`, or all) and their weights."""
    pool = [
        (p, w)
        for p, w in zip(constitution.principles, constitution.weights, strict=True)
        if w > 0 and (not kind or p.kind == kind)
    ]
    return [p for p, _ in pool], [w for _, w in pool]


def draw_principle(pool: tuple[list, list[float]], seed: int, k: int, prompt_id: str, n: int):
    """The principle of pass n for one prompt, by weight: seeded by (run seed, round, prompt, pass), so a
    rerun, a resume or a different batch size draws the same one."""
    principles, weights = pool
    rng = random.Random(f"{seed}:critique:{k}:{prompt_id}:{n}")
    return rng.choices(principles, weights=weights, k=1)[0]


# -- the stage --------------------------------------------------------------------------------------------


def outputs(figures: dict) -> list[str]:
    return ["revisions.jsonl"] + (["helpful.jsonl"] if figures.get("helpful") is not None else [])


def validate(run) -> None:

    c = run.constitution
    problems: list[Problem] = []
    cfg = run.config.critique
    drawn, _ = candidates(c, cfg.principle_kind)
    if not drawn:
        raise PrincipleError(
            [
                Problem(
                    c.path,
                    "principles",
                    f"no principle of kind {cfg.principle_kind!r} (critique.principle_kind)",
                )
            ]
        )
    missing_requests(drawn, problems)
    if cfg.few_shot > len(c.examples):
        problems.append(
            Problem(
                c.examples_path,
                "example",
                f"critique.few_shot = {cfg.few_shot} asks for more examples than the file has ({len(c.examples)})",
            )
        )
    if problems:
        raise PrincipleError(problems)
    for key in ("prompts", "helpful_prompts"):
        if getattr(cfg, key):
            # relative to the run folder (an absolute path stays as it is)
            run.cache[f"critique.{key}"] = load_prompts(run.dir / getattr(cfg, key))


def run(round_) -> dict:

    cfg, critique = round_.config, round_.config.critique
    c = round_.run.constitution
    examples = c.examples[: critique.few_shot]
    eligible = candidates(c, critique.principle_kind)  # the principles critiques are drawn from
    if critique.prompts:
        prompts = round_.run.cache["critique.prompts"]
    else:
        prompts = round_prompts(round_)
    base = cfg.seed * 1000 + round_.k
    seeds = iter(base + 10**9 * step for step in range(1, 100))
    t0 = time.perf_counter()
    round_.progress.note(
        f"round {round_.k}: {len(prompts)} prompts, {critique.passes} critique-revision pass(es) with {round_.model}"
    )
    sample_gen, backend = generator(round_, cfg.generate)
    settings = dataclasses.replace(
        cfg.generate,
        temperature=critique.temperature,
        max_new_tokens=critique.max_new_tokens,
        max_prompt_tokens=critique.max_prompt_tokens,
    )
    gen, _ = generator(round_, settings)

    def once(gen, conversations, seed):
        return [group[0] for group in gen.generate(conversations, 1, seed, round_.progress)]

    initial = once(sample_gen, [p["prompt"] for p in prompts], next(seeds))
    passes, current, tokens = revise(
        once, gen, prompts, [s.text for s in initial], examples, eligible, round_, seeds
    )
    tokens += sum(s.tokens for s in initial)
    generator_path = portable(round_.model, round_.run.dir)
    records = []
    for p, s, ps in zip(prompts, initial, passes, strict=True):
        revised = any(x["kept"] for x in ps)
        records.append(
            {
                "schema": SCHEMA_VERSION,
                "round": round_.k,
                "prompt_id": p["id"],
                "prompt": p["prompt"],
                "initial": s.text,
                "initial_finished": s.finished,
                "passes": ps,
                "final": next(x["revision"] for x in reversed(ps) if x["kept"]) if revised else None,
                "generator": generator_path,
            }
        )
    write_jsonl(round_.dir / "revisions.jsonl", records)

    helpful = None
    if critique.helpful_prompts:
        chosen = select_prompts(
            round_.run.cache["critique.helpful_prompts"], critique.helpful_per_round, cfg.seed, round_.k
        )
        answers = once(sample_gen, [p["prompt"] for p in chosen], next(seeds))
        helpful = [
            {
                "schema": SCHEMA_VERSION,
                "round": round_.k,
                "prompt_id": p["id"],
                "prompt": p["prompt"],
                "completion": a.text,
                "finished": a.finished,
                "generator": generator_path,
            }
            for p, a in zip(chosen, answers, strict=True)
        ]
        write_jsonl(round_.dir / "helpful.jsonl", helpful)
        tokens += sum(a.tokens for a in answers)

    all_passes = [x for ps in passes for x in ps]
    dropped = {reason: sum(x["dropped"] == reason for x in all_passes) for reason in DROP_REASONS}
    kept = sum(x["kept"] for x in all_passes)
    return {
        "prompts": len(records),
        "revisions": len(all_passes),
        "kept": kept,
        "kept_share": kept / len(all_passes) if all_passes else 0.0,
        "dropped": dropped,
        "revised_prompts": sum(x["final"] is not None for x in records),
        "helpful": len(helpful) if helpful is not None else None,
        "tokens": tokens,
        "truncated_prompts": gen.truncated_prompts,
        "backend": backend,
        "seconds": time.perf_counter() - t0,
    }


def revise(once, gen, prompts: list[dict], current: list[str], examples, eligible, round_, seeds):
    """`critique.passes` rounds of critique and revision of each prompt's current answer, each pass under a
    principle drawn for the prompt and pass; a revision is kept unless `drop_reason` finds it unusable.
    Returns (the passes of each prompt, the final answers, the tokens generated)."""
    passes: list[list[dict]] = [[] for _ in prompts]
    texts = [p["prompt"] for p in prompts]
    current, tokens = list(current), 0
    for n in range(1, round_.config.critique.passes + 1):
        principles = [draw_principle(eligible, round_.config.seed, round_.k, p["id"], n) for p in prompts]
        critiques = once(
            gen,
            [
                critique_messages(examples, text, answer, principle)
                for text, answer, principle in zip(texts, current, principles, strict=True)
            ],
            next(seeds),
        )
        revisions = once(
            gen,
            [
                revision_messages(examples, text, answer, principle, critique.text)
                for text, answer, principle, critique in zip(
                    texts, current, principles, critiques, strict=True
                )
            ],
            next(seeds),
        )
        for i, (principle, critique, revision) in enumerate(
            zip(principles, critiques, revisions, strict=True)
        ):
            reason = drop_reason(revision.text, revision.finished, current[i], examples)
            passes[i].append(
                {
                    "pass": n,
                    "principle": principle.id,
                    "critique": critique.text,
                    "critique_finished": critique.finished,
                    "revision": revision.text,
                    "revision_tokens": revision.tokens,
                    "revision_finished": revision.finished,
                    "kept": reason is None,
                    "dropped": reason,
                }
            )
            if reason is None:
                current[i] = revision.text
            tokens += critique.tokens + revision.tokens
    return passes, current, tokens
