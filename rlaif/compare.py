"""`rlaif compare`: two models answer the same prompts and the run's judge compares each pair of answers."""

from __future__ import annotations

import random

from rlaif.evaluate import Evaluator, win_rate
from rlaif.progress import SILENT, Progress


def compare_models(
    a: str,
    b: str,
    prompts: list[str],
    judge_model: str,
    config,
    progress: Progress = SILENT,
    max_new_tokens: int = 96,
    temperature: float = 0.0,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """Two models answer the same prompts (greedy by default); the judge compares each pair of answers.
    Returns the rows (prompt, both answers, P(a better), verdict) and a's win rate with its interval."""
    from rlaif.realign import realigned_generate

    ev = Evaluator(".", [], judge_model, config, progress, max_new_tokens, temperature, seed, device)
    answers = {}
    for name, path in (("a", a), ("b", b)):
        tok = ev.tokenizer(path)
        answers[name] = realigned_generate(
            ev.model(path), None, tok, prompts, 1.0, max_new_tokens, temperature, seed=seed, progress=progress
        )
    judge, c = ev.judge()
    items = []
    for i, (p, ra, rb) in enumerate(zip(prompts, answers["a"], answers["b"], strict=True)):
        principles = c.sample_k(random.Random(f"{seed}:compare:{i}"), judge.config.principles_per_pair)
        items.append({"conversation": f"User: {p}", "x": ra.text, "y": rb.text, "principles": principles})
    progress.stage("judge", len(items))
    verdicts = judge.judge(items)
    rows = []
    for p, ra, rb, v in zip(prompts, answers["a"], answers["b"], verdicts, strict=True):
        p_a = 0.5 if ra.text == rb.text else v.p_x
        rows.append(
            {
                "prompt": p,
                "a": ra.text,
                "b": rb.text,
                "p_a": p_a,
                "principle": v.principle,
                "winner": "a" if p_a > 0.5 else "b" if p_a < 0.5 else "tie",
            }
        )
    return {
        "a": a,
        "b": b,
        "judge_model": config.judge.reward_model if config.judge.mode == "reward" else judge_model,
        "judge_mode": config.judge.mode,
        "win_rate_a": win_rate([r["p_a"] for r in rows]),
        "rows": rows,
    }
