"""The constitutional judge: which of two responses better follows a principle (Constitutional AI,
arXiv:2212.08073, the RL-CAI feedback step), and how well one response follows it (`score`, the reward).

Three modes (`judge.mode`):

- `pointwise`: each response is scored alone, P(Yes) to the principle's yes/no `check` question, and
  P(x better) = sigmoid(logit P(Yes | x) - logit P(Yes | y)) (Bradley-Terry on the two scores). Position
  cannot bias it, and it was the most accurate mode on human labels with the embedded model (README).
- `logprob`: pairwise; the probabilities of the two answer options right after the template's answer prefix,
  one forward pass per order, both orders read and averaged (rlaif/verdicts.py).
- `rationale`: pairwise; the judge writes a short reasoning and ends with "Answer: A" or "Answer: B" (the
  chain-of-thought variant of the paper). The verdict line is parsed strictly; a reply without one is
  dropped as "unparsed", never guessed. Rationales are kept with the verdict.

A pair can be judged under k principles at once (`judge.principles_per_pair`, an ensemble): the members'
log-odds are averaged per order (votes, for rationales) before the verdict. Responses are untrusted text
inside the judge prompt: with `judge.harden`, markers and special tokens in them are defused first.

The package: `prompts` (templates, hardening, option tokens, rationale parsing), `verdicts` (pure verdict
arithmetic), `ranking` (Bradley-Terry, best vs. worst, best-of-n), `scorers` (transformers, vLLM, OpenAI
endpoints); here, `Judge` runs a mode over a scorer and `build_judge` makes one for any caller.

    rlaif judge-eval --data ../shared/data/hh-harmless-dev.jsonl --mode pointwise
"""

from __future__ import annotations

import dataclasses
import math

from rlaif.judge.prompts import build_messages, harden, option_token_ids, parse_rationale, template_markers
from rlaif.judge.routed import RoutedJudge
from rlaif.judge.scorers import OpenAIScorer, TransformersScorer, VLLMScorer
from rlaif.lora import is_lora
from rlaif.models import served_name
from rlaif.principles import Principle, PrincipleError, Problem
from rlaif.progress import SILENT, Progress
from rlaif.reward.judge import RewardJudge
from rlaif.reward.model import RewardModel
from rlaif.verdicts import (
    Verdict,
    decide,
    decide_pointwise,
    decide_votes,
    logit,
    position_bias,
    sigmoid,
)

__all__ = ["Judge", "build_judge", "OpenAIScorer", "TransformersScorer", "VLLMScorer", "Verdict"]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _needs_check(principles) -> None:
    missing = [p for p in principles if not p.check]
    if missing:
        raise PrincipleError(
            [Problem(p.path or p.id, "check", "required for pointwise judging and scoring") for p in missing]
        )


class Judge:
    """Judges many (conversation, x, y, principles) items in the configured mode, with any scorer.

    items: {"conversation": str, "x": str, "y": str, "principles": tuple[Principle, ...]} (or "principle":
    one Principle). `judge` returns one Verdict per item, in order; `scores` one pointwise log-odds per
    (conversation, response, principle), whatever the mode."""

    def __init__(self, scorer, tokenizer, constitution, config):
        self.scorer, self.tokenizer, self.config = scorer, tokenizer, config
        self.mode = config.mode
        self.template = constitution.template_for(self.mode)
        self.pointwise = constitution.template_for("pointwise")
        if self.mode == "pointwise":
            _needs_check(constitution.principles)
        self.options = (
            None
            if self.mode == "rationale"
            else option_token_ids(tokenizer, self.template.answer_prefix, self.template.options)
        )
        self._pointwise_options = None  # tokenized on the first `scores` call
        self.markers = template_markers(self.template) if config.harden else []
        self.specials = (
            sorted(
                {t for t in getattr(tokenizer, "all_special_tokens", []) if len(t) > 1}
                | {t for t in getattr(tokenizer, "get_added_vocab", dict)() if len(t) > 1},
                key=len,
                reverse=True,
            )
            if config.harden
            else []
        )
        self.truncated = 0

    def _safe(self, text: str) -> str:
        return harden(text, self.markers, self.specials) if self.config.harden else text

    def _encode(
        self, principle: Principle, conversation: str, first: str, second: str = "", template=None
    ) -> list[int]:
        tok, template = self.tokenizer, template or self.template
        first, second = self._safe(first), self._safe(second)

        def ids_for(conv: str) -> list[int]:
            messages, prefix = build_messages(template, principle, conv, first, second)
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefix
            return tok(text, add_special_tokens=False).input_ids

        conversation = self._safe(conversation)
        ids = ids_for(conversation)
        over = len(ids) - self.config.max_length
        if over > 0:
            # cut the conversation from the left; the responses under judgement stay whole
            conv_ids = tok(conversation, add_special_tokens=False).input_ids
            keep = max(0, len(conv_ids) - over - 8)
            ids = ids_for("..." + tok.decode(conv_ids[len(conv_ids) - keep :]))
            self.truncated += 1
        return ids

    # -- the reward interface --------------------------------------------------------------------------

    def scores(self, items: list[tuple[str, str, Principle]], progress: Progress = SILENT) -> list[float]:
        """Pointwise log-odds, log P(Yes) - log P(No), that each response follows its principle's `check`
        (conversation, response, principle): the reward a policy-gradient stage maximises and what `eval`
        reads as harmlessness. Any mode's judge scores this way; identical prompts are scored once."""
        _needs_check({p for _, _, p in items})
        if self._pointwise_options is None:
            self._pointwise_options = option_token_ids(
                self.tokenizer, self.pointwise.answer_prefix, self.pointwise.options
            )
        prompts = [self._encode(p, conv, resp, template=self.pointwise) for conv, resp, p in items]
        unique = list(dict.fromkeys(tuple(p) for p in prompts))
        progress.stage("score", len(unique))
        lps = self.scorer.option_logprobs([list(u) for u in unique], self._pointwise_options, progress)
        table = dict(zip(unique, lps, strict=True))
        return [table[tuple(p)][0] - table[tuple(p)][1] for p in prompts]

    def score(self, conversation: str, response: str, principle: Principle) -> float:
        """One response's pointwise log-odds under one principle (see `scores`)."""
        return self.scores([(conversation, response, principle)])[0]

    # -- verdicts on pairs -----------------------------------------------------------------------------

    def judge(self, items: list[dict], progress: Progress = SILENT) -> list[Verdict]:
        members = [tuple(it.get("principles") or (it["principle"],)) for it in items]
        if self.mode == "pointwise":
            return self._pointwise(items, members, progress)
        if self.mode == "rationale":
            return self._rationale(items, members, progress)
        return self._logprob(items, members, progress)

    def _score(self, prompts: list[list[int]], progress: Progress, stage: str):
        """Option log-probs for each prompt; identical prompts are scored once."""
        unique = list(dict.fromkeys(tuple(p) for p in prompts))
        progress.stage(stage, len(unique))
        lps = self.scorer.option_logprobs([list(u) for u in unique], self.options, progress)
        table = dict(zip(unique, lps, strict=True))
        # renormalised over the two options: P(first option) = e^la / (e^la + e^lb), and their total mass
        return [
            (sigmoid(la - lb), math.exp(la) + math.exp(lb)) for la, lb in (table[tuple(p)] for p in prompts)
        ]

    def _prompts(self, items, members) -> list[list[int]]:
        """Two prompts per (item, principle): x and y alone (pointwise), or the orders (x, y) and (y, x)."""
        out = []
        for it, ps in zip(items, members, strict=True):
            conv, x, y = it["conversation"], it["x"], it["y"]
            for p in ps:
                if self.mode == "pointwise":
                    out += [self._encode(p, conv, x), self._encode(p, conv, y)]
                else:
                    out += [self._encode(p, conv, x, y), self._encode(p, conv, y, x)]
        return out

    @staticmethod
    def _ensemble(members, scores) -> list[tuple[float, float, float]]:
        """Per item: its two readings (P(Yes | x), P(Yes | y), or P(first) in each order) with log-odds averaged
        over its principles, and the mean option mass."""
        scores = iter(scores)
        out = []
        for ps in members:
            first, second, mass = [], [], []
            for _ in ps:
                (a, ma), (b, mb) = next(scores), next(scores)
                first.append(logit(a))
                second.append(logit(b))
                mass.append((ma + mb) / 2)
            out.append((sigmoid(_mean(first)), sigmoid(_mean(second)), _mean(mass)))
        return out

    def _pointwise(self, items, members, progress) -> list[Verdict]:
        scores = self._score(self._prompts(items, members), progress, "judge (pointwise)")
        return [
            decide_pointwise("+".join(p.id for p in ps), sx, sy, self.config.min_confidence, mass)
            for ps, (sx, sy, mass) in zip(members, self._ensemble(members, scores), strict=True)
        ]

    def _logprob(self, items, members, progress) -> list[Verdict]:
        combined = self._ensemble(members, self._score(self._prompts(items, members), progress, "judge"))
        bias = position_bias([(a, b) for a, b, _ in combined]) if self.config.calibrate else 0.0
        return [
            decide(
                "+".join(p.id for p in ps),
                a,
                b,
                bias,
                self.config.min_confidence,
                self.config.require_consistent,
                mass,
            )
            for ps, (a, b, mass) in zip(members, combined, strict=True)
        ]

    def _rationale(self, items, members, progress) -> list[Verdict]:

        prompts = self._prompts(items, members)
        progress.stage("judge (rationale)", len(prompts))
        texts = iter(self.scorer.generate(prompts, self.config.rationale_tokens, progress))
        prefix, options = self.template.answer_prefix, self.template.options
        out = []
        for ps in members:
            r_xy, r_yx, v_xy, v_yx = [], [], [], []
            for _ in ps:
                t_xy, t_yx = next(texts), next(texts)
                r_xy.append(t_xy)
                r_yx.append(t_yx)
                for t, votes in ((t_xy, v_xy), (t_yx, v_yx)):
                    pick = parse_rationale(t, prefix, options)
                    if pick is not None:
                        votes.append(1.0 - pick)  # P(first option) as a vote
            v = decide_votes(
                "+".join(p.id for p in ps),
                v_xy,
                v_yx,
                self.config.min_confidence,
                self.config.require_consistent,
            )
            out.append(dataclasses.replace(v, rationale_xy=tuple(r_xy), rationale_yx=tuple(r_yx)))
        return out


def _reward_judge(model_path: str, config, constitution, pool, backend: str):
    """Reward mode: `config.reward_model` judges every principle when set; otherwise each principle is judged
    by the model the constitution's `[reward_models]` names for it (rlaif/judge/routed.py), and one with none
    by the prompted pointwise judge on `model_path` (`judge.unrouted = "pointwise"`) or not at all. The
    constitution's `[refusal_rewards]` shift refusals' rewards on top of either, and `judge.missing_eos_penalty`
    unfinished responses' (rlaif/judge/routed.py)."""

    shifts = {p.id: constitution.refusal_reward_for(p) for p in constitution.principles}
    if config.reward_model:
        one = RewardJudge(
            RewardModel(config.reward_model, pool, config.batch_size), config, config.reward_model
        )
        if (
            not any(shifts.values())
            and not config.missing_eos_penalty
            and not any(config.missing_eos_penalties.values())
        ):
            return one
        return RoutedJudge(
            {p.id: (config.reward_model, one) for p in constitution.principles}, config, shifts
        )
    models: dict[str, RewardJudge] = {}
    routes = {}
    for p in constitution.principles:
        name = constitution.reward_model_for(p)
        if name is None:
            if config.unrouted != "pointwise":
                raise PrincipleError([unrouted_problem(constitution, p)])
            if "prompted" not in models:
                prompted = dataclasses.replace(config, mode="pointwise")
                models["prompted"] = build_judge(model_path, prompted, constitution, pool, backend)
            routes[p.id] = ("prompted", models["prompted"])
            continue
        if name not in models:
            models[name] = RewardJudge(RewardModel(name, pool, config.batch_size), config, name)
        routes[p.id] = (name, models[name])
    return RoutedJudge(routes, config, shifts)


def unrouted_problem(constitution, p: Principle) -> Problem:
    return Problem(
        constitution.path,
        "reward_models",
        f'no reward model for principle {p.id!r} (kind {p.kind}): add `{p.kind} = "MODEL"` or '
        f"`{p.id} = \"MODEL\"` under [reward_models], or set judge.unrouted = 'pointwise' to judge it with "
        "the prompted judge",
    )


def build_judge(model_path: str, config, constitution, pool, backend: str = "transformers") -> Judge:
    """The judge for rounds, `eval`, `compare`, `sample` and the benchmarks: `model_path`'s tokenizer renders
    the prompts; the scorer is that model borrowed from `pool` (transformers), the pool's vLLM engine for it
    (vllm), or OpenAI-compatible endpoints (openai: `config.base_url` / `config.endpoints`; a round kept as a
    LoRA adapter is loaded into them and judged under its name). In `reward` mode the judge is the
    Bradley-Terry reward model `config.reward_model` (rlaif/reward/), or each principle's own model
    (the constitution's `[reward_models]`), with the same interface."""
    if config.mode == "reward":
        return _reward_judge(model_path, config, constitution, pool, backend)
    tok = pool.tokenizer(model_path)
    if backend == "vllm":
        scorer = VLLMScorer(pool.engine(model_path), tok)
    elif backend == "openai":
        scorer = OpenAIScorer(tok, config)

        if is_lora(model_path) and not config.api_model:  # a round kept as an adapter judges as that adapter
            scorer.model = served_name(model_path)
            scorer.fleet.load_lora(scorer.model, model_path)
    else:
        model, tok = pool.model(model_path)
        scorer = TransformersScorer(model, tok, config.batch_size)
    return Judge(scorer, tok, constitution, config)
