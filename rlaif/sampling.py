"""Sampling a model outside a run (`rlaif sample`): best-of-n, where the judge ranks n samples per prompt and the
first is kept, or DeRa realignment (rlaif/realign.py), where the model's and a reference's logits are mixed.
Each returns one record per prompt, ready to write as JSON Lines."""

from __future__ import annotations

from rlaif.config import GenerateConfig, JudgeConfig, ModelConfig
from rlaif.generate.hf import TransformersGenerator
from rlaif.judge import build_judge
from rlaif.judge.ranking import best_of_n
from rlaif.progress import SILENT, Progress


def best_of(
    path: str,
    pool,
    prompts: list[str],
    n: int,
    constitution,
    evaluator: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.8,
    seed: int = 0,
    progress: Progress = SILENT,
    missing_eos_penalty: float = 0.0,
) -> list[dict]:
    """n samples per prompt from the model at `path`; the judge (the model itself, prompted, or the reward
    model `evaluator`) ranks them under the constitution's principles and the best is the response. With
    `missing_eos_penalty` (reward models only: `evaluator`, or the constitution's `[reward_models]` without one),
    a sample cut at `max_new_tokens` before it finished loses that much of its reward against a finished one."""

    model, tok = pool.model(path)
    settings = GenerateConfig(samples_per_prompt=n, max_new_tokens=max_new_tokens, temperature=temperature)
    gen = TransformersGenerator(path, settings, ModelConfig(policy=path), model=model, tokenizer=tok)
    groups = gen.generate(prompts, n, seed, progress)
    if evaluator or missing_eos_penalty:
        judge_config = JudgeConfig(
            mode="reward", reward_model=evaluator, missing_eos_penalty=missing_eos_penalty
        )
    else:
        judge_config = JudgeConfig()
    judge = build_judge(path, judge_config, constitution, pool)
    finished = [[s.finished for s in g] for g in groups]
    picks = best_of_n(judge, constitution, prompts, [[s.text for s in g] for g in groups], seed, finished)
    return [
        {
            "prompt": prompt,
            "response": group[best].text,
            "finished": group[best].finished,
            "best_of": n,
            "candidates": [s.text for s in group],
            "candidates_finished": [s.finished for s in group],
            "scores": scores,
            "best": best,
        }
        for prompt, group, (best, scores) in zip(prompts, groups, picks, strict=True)
    ]


def realigned(
    path: str,
    reference: str | None,
    pool,
    prompts: list[str],
    lam: float = 1.0,
    max_new_tokens: int = 128,
    temperature: float = 0.8,
    seed: int = 0,
    progress: Progress = SILENT,
) -> list[dict]:
    """One sample per prompt from the DeRa mix of the model at `path` and `reference` at lambda `lam` (1 = the
    model alone: no reference is loaded)."""
    from rlaif.realign import realigned_generate

    model, tok = pool.model(path)
    ref = pool.model(reference)[0] if lam != 1 else None
    samples = realigned_generate(
        model, ref, tok, prompts, lam, max_new_tokens, temperature, seed=seed, progress=progress
    )
    return [
        {"prompt": p, "response": s.text, "realign": lam, "tokens": s.tokens, "finished": s.finished}
        for p, s in zip(prompts, samples, strict=True)
    ]
