"""The judge stage: each prompt's responses are judged under principle(s) drawn from the constitution (one
draw per prompt, seeded), every pair when they are ranked (`judge.pairing = "rank"`: Bradley-Terry, then the
best- vs. worst-ranked pair) or disjoint pairs 1st-2nd, 3rd-4th.

Writes judgements.jsonl: one record per prompt (or disjoint pair): the pair, principle(s), mode, the judge's
probabilities, rationales, P(x better), winner or drop reason, and the ranking of all the prompt's responses.

    rlaif run runs/demo --set judge.mode=logprob --set judge.principles_per_pair=3
"""

from __future__ import annotations

import dataclasses
import random
import time

from rlaif.applicability import PromptClassifier, resolve_classifier
from rlaif.checks import principle_keys
from rlaif.data import SCHEMA_VERSION, DataError, read_jsonl, write_jsonl
from rlaif.generate.vllm_backend import resolve_backend
from rlaif.judge import build_judge, unrouted_problem
from rlaif.judge.ranking import all_pairs, best_vs_worst
from rlaif.layout import portable
from rlaif.models import resolve_model
from rlaif.principles import PrincipleError, Problem
from rlaif.reward.format import resolve_reward_model

PRODUCES_MODEL = False
LOWER_ON_OOM = "judge.batch_size or judge.max_length"


def outputs(figures: dict) -> list[str]:
    return ["judgements.jsonl"]


def validate(run) -> None:

    jc = run.config.judge
    if jc.backend != "openai":
        resolve_backend(jc.backend, run.device)
    if jc.applicability == "classifier":
        resolve_classifier(jc.prompt_classifier)
    if jc.applicability == "label":
        for p in run.prompts:  # every prompt labelled, before the first stage
            label_kind(p, str(run.prompts_path))
    if jc.mode == "reward":
        c = run.constitution
        principle_keys(c, "judge.missing_eos_penalties", jc.missing_eos_penalties)
        named = (
            [("judge.reward_model", jc.reward_model)]
            if jc.reward_model
            else [(f"{c.path}: [reward_models] {key}", m) for key, m in c.reward_models]
        )
        # a wrong name or folder fails now, naming where it is set and the shipped heads
        for where, name in named:
            resolve_reward_model(name, where)
        if not jc.reward_model:
            unrouted = [p for p in c.principles if c.reward_model_for(p) is None]
            if unrouted and jc.unrouted == "stop":
                raise PrincipleError([unrouted_problem(c, p) for p in unrouted])
    # the prompted pointwise judge asks each principle it judges its `check`: every principle in pointwise
    # mode, the principles without a reward model under judge.unrouted = "pointwise"
    pointwise = []
    if jc.mode == "pointwise":
        pointwise = list(run.constitution.principles)
    elif jc.mode == "reward" and not jc.reward_model and jc.unrouted == "pointwise":
        pointwise = [p for p in run.constitution.principles if run.constitution.reward_model_for(p) is None]
    if pointwise:
        missing = [p for p in pointwise if not p.check]
        if missing:
            raise PrincipleError(
                [
                    Problem(
                        p.path or p.id,
                        "check",
                        "missing: judge.mode = 'pointwise' asks it of every principle",
                    )
                    for p in missing
                ]
            )


def judge_model(round_) -> str:
    """The judge's model: the round's own model (self-rewarding), or the configured fixed one."""

    judge = round_.config.model.judge
    return round_.model if judge == "policy" else resolve_model(judge, round_.progress.note)


LABEL_KINDS = {
    "harmful": "harmlessness",
    "harmlessness": "harmlessness",
    "benign": "helpfulness",
    "helpfulness": "helpfulness",
}
"""judge.applicability = "label": a prompt's `kind` in the prompt file, and the principle kind that judges it."""


def label_kind(prompt: dict, where: str) -> str:
    """The principle kind a labelled prompt is judged under; a missing or unknown label names the prompt."""

    kind = LABEL_KINDS.get(prompt.get("kind"))  # type: ignore[arg-type]
    if kind is None:
        raise DataError(
            f"{where}: prompt {prompt['id']!r}: judge.applicability = 'label' needs a \"kind\" of "
            f"{', '.join(map(repr, LABEL_KINDS))}, got {prompt.get('kind')!r}"
        )
    return kind


def applicable_kinds(
    round_, prompts: list, ids: list[str] | None = None
) -> list[tuple[float | None, str | None]]:
    """Per prompt, (P(harmful request), the principle kind that judges it): with applicability "classifier",
    harmlessness for a flagged prompt and helpfulness for the rest; with "label", the kind the prompt file
    gives the prompt of each id in `ids` (P is then None); (None, None) with "any"."""
    jc = round_.config.judge
    if jc.applicability == "any":
        return [(None, None)] * len(prompts)
    if jc.applicability == "label":
        by_id = {p["id"]: p for p in round_.run.prompts}
        assert ids is not None and len(ids) == len(prompts)
        return [(None, label_kind(by_id.get(i, {"id": i}), str(round_.run.prompts_path))) for i in ids]

    clf = PromptClassifier(jc.prompt_classifier, round_.pool, jc.batch_size)
    texts = [
        p if isinstance(p, str) else next((m["content"] for m in p if m["role"] == "user"), "")
        for p in prompts
    ]
    ps = clf.p_harmful(texts, round_.progress)
    return [(p, "harmlessness" if p >= clf.spec.threshold else "helpfulness") for p in ps]


def pair_items(round_, responses: list[dict]) -> tuple[list[dict], list[tuple[list[dict], list[int]]]]:
    """The pairs to judge, and per prompt (its responses, the indices of its pairs)."""

    cfg = round_.config
    by_prompt: dict[str, list[dict]] = {}
    for x in responses:
        by_prompt.setdefault(x["prompt_id"], []).append(x)
    harmful = applicable_kinds(round_, [g[0]["prompt"] for g in by_prompt.values()], list(by_prompt))
    items, groups = [], []
    for (pid, group), (p_harmful, kind) in zip(by_prompt.items(), harmful, strict=True):
        group.sort(key=lambda x: x["sample"])
        # one principle draw per prompt: every comparison of its responses uses the same principle(s)
        rng = random.Random(f"{cfg.seed}:judge:{round_.k}:{pid}")
        principles = round_.run.constitution.sample_k(rng, cfg.judge.principles_per_pair, kind)
        if cfg.judge.pairing == "rank":
            pairs = all_pairs(len(group))
        else:  # disjoint pairs: sample 0 vs 1, 2 vs 3, ...
            pairs = [(i, i + 1) for i in range(0, len(group) - 1, 2)]
        first = len(items)
        for i, j in pairs:
            a, b = group[i], group[j]
            items.append(
                {
                    "prompt_id": pid,
                    "prompt": a["prompt"],
                    "conversation": f"User: {a['prompt']}",
                    "messages": a["prompt"],
                    "x": a["text"],
                    "y": b["text"],
                    "finished": [a["finished"], b["finished"]],
                    "samples": [a["sample"], b["sample"]],
                    "principles": principles,
                    "p_harmful": p_harmful,
                    "pair": (i, j),
                }
            )
        groups.append((group, list(range(first, len(items)))))
    return items, groups


def run(round_) -> dict:

    cfg = round_.config
    responses = read_jsonl(round_.dir / "responses.jsonl")
    round_.progress.note(
        f"round {round_.k}: judging {len(responses)} responses to {len({x['prompt_id'] for x in responses})} prompts"
    )
    path = judge_model(round_)
    backend = (
        cfg.judge.backend
        if cfg.judge.backend == "openai"
        else resolve_backend(cfg.judge.backend, round_.run.device)
    )
    judge = build_judge(path, cfg.judge, round_.run.constitution, round_.pool, backend)
    if cfg.judge.mode == "reward":  # one model for all, or each principle's (its kind's) own
        routes = round_.run.constitution.reward_models
        path = cfg.judge.reward_model or "by principle: " + ", ".join(f"{k}={m}" for k, m in routes)
    else:
        path = portable(path, round_.run.dir)
    if backend == "openai":
        path = f"{' '.join(judge.scorer.fleet.urls)} {judge.scorer.model}"
    items, groups = pair_items(round_, responses)
    guided = {(x["prompt_id"], x["sample"]): x["guidance"] for x in responses if "guidance" in x}
    t0 = time.perf_counter()
    verdicts = judge.judge(items, round_.progress)
    seconds = time.perf_counter() - t0
    comparisons = len(items)
    rankings: dict[int, list[dict]] = {}
    if cfg.judge.pairing == "rank":
        ranked_items, ranked_verdicts = [], []
        for group, idx in groups:
            if not idx:
                continue
            it, v, ranking = best_vs_worst(group, [items[q] for q in idx], [verdicts[q] for q in idx])
            rankings[len(ranked_items)] = ranking
            ranked_items.append(it)
            ranked_verdicts.append(v)
        items, verdicts = ranked_items, ranked_verdicts
    # two identical samples teach DPO nothing (their log-ratios cancel): never a preference pair
    verdicts = [
        dataclasses.replace(v, winner=None, reason="identical") if it["x"] == it["y"] else v
        for it, v in zip(items, verdicts, strict=True)
    ]
    records = [
        {
            "schema": SCHEMA_VERSION,
            "round": round_.k,
            "prompt_id": it["prompt_id"],
            "prompt": it["prompt"],
            "x": it["x"],
            "y": it["y"],
            "samples": it["samples"],
            "x_finished": it["finished"][0],
            "y_finished": it["finished"][1],
            "judge": path,
            "ranking": rankings.get(q),
            "kinds": [p.kind for p in it.get("principles", ())],
            "p_harmful": it.get("p_harmful"),
            **({"guided": [guided.get((it["prompt_id"], j)) for j in it["samples"]]} if guided else {}),
            **v.to_dict(),
        }
        for q, (it, v) in enumerate(zip(items, verdicts, strict=True))
    ]
    write_jsonl(round_.dir / "judgements.jsonl", records)
    return {
        **figures(records),
        "comparisons": comparisons,
        "mode": cfg.judge.mode,
        "truncated": judge.truncated,
        "model": path,
        "backend": backend,
        "seconds": seconds,
    }


def figures(records: list[dict]) -> dict:
    """Counts and rates of a round's judgements (pure)."""
    n = len(records)

    def share(count) -> float:
        return count / n if n else 0.0

    return {
        "pairs": n,
        "kept": sum(x["kept"] for x in records),
        "position_consistency": share(sum(x["consistent"] for x in records)),
        "position_consistency_calibrated": share(sum(x["consistent_calibrated"] for x in records)),
        "first_slot_rate": share(sum((x["p_first_xy"] > 0.5) + (x["p_first_yx"] > 0.5) for x in records) / 2),
        "bias": records[0]["bias"] if records else 0.0,
        "dropped_inconsistent": sum(x["reason"] == "inconsistent" for x in records),
        "dropped_uncertain": sum(x["reason"] == "uncertain" for x in records),
        "dropped_identical": sum(x["reason"] == "identical" for x in records),
        "dropped_unparsed": sum(x["reason"] == "unparsed" for x in records),
        "dropped_tie": sum(x["reason"] in ("tie", "rank-disagrees") for x in records),
        # which principle kinds and which models gave the verdicts (an ensemble counts once per member)
        "by_kind": _counts(k for x in records for k in x.get("kinds", ())),
        "by_model": _counts(m for x in records for m in (x.get("judged_by") or "").split("+") if m),
        **guided_figures(records),
    }


def guided_figures(records: list[dict]) -> dict:
    """generate.guided_samples: of the kept verdicts between a guided and a plain response, how many the guided
    one won, by the kind whose guidance it had (pure; {} when no response was guided)."""
    if not any("guided" in x for x in records):
        return {}
    out: dict[str, dict[str, int]] = {}
    for x in records:
        g = x.get("guided") or [None, None]
        if not x["kept"] or (g[0] is None) == (g[1] is None):
            continue
        kind = g[0] or g[1]
        won = (x["winner"] == "x") == (g[0] is not None)
        tally = out.setdefault(kind, {"won": 0, "lost": 0})
        tally["won" if won else "lost"] += 1
    return {"guided": dict(sorted(out.items()))}


def _counts(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))
