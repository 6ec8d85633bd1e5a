"""The constitutional judge: which of two responses better follows a principle (Constitutional AI,
arXiv:2212.08073, the RL-CAI feedback step).

For a pair (x, y) the judge reads the next-token probabilities of the two answer options right after the
template's answer prefix: one forward pass per order, no decoding. Both orders are read, (x, y) and (y, x),
so position bias cancels in the average:

    P(x better) = ( P(first | x, y) + (1 - P(first | y, x)) ) / 2

Small judges have a strong, nearly constant preference for one slot. With `calibrate`, its mean log-odds for
the first slot over the whole batch is subtracted from each order's log-odds first (contextual calibration,
arXiv:2102.09690), so the consistency check asks "do both orders lean the same way beyond the usual bias"
rather than failing on every pair. Pairs whose orders disagree, or whose winner is not clear enough, are
dropped with the reason recorded.

Prompt building and the verdict arithmetic are pure functions; `PairwiseJudge` runs the model.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from rlaif.principles import JudgeTemplate, Principle
from rlaif.progress import SILENT, Progress

_PLACEHOLDER = re.compile(r"\{(question|conversation|response_a|response_b)\}")


def render(template: str, values: dict[str, str]) -> str:
    """Fill {placeholders} in one pass: text inside a value is never re-scanned, so a response that
    contains "{response_b}" stays literal text."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def build_messages(template: JudgeTemplate, principle: Principle, conversation: str, first: str, second: str):
    """Chat messages for one judge order, and the assistant text that precedes the answer option."""
    user = render(
        template.user,
        {
            "question": principle.question,
            "conversation": conversation,
            "response_a": first,
            "response_b": second,
        },
    )
    messages = [{"role": "user", "content": user}]
    if template.system:
        messages.insert(0, {"role": "system", "content": template.system})
    return messages, template.answer_prefix


def logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@dataclass(frozen=True)
class Verdict:
    """One judged pair (x, y) under one principle. Probabilities are of the *first slot* per order."""

    principle: str
    p_first_xy: float
    """P(first option) when x is shown first: P(x better) read in order (x, y)."""
    p_first_yx: float
    """P(first option) when y is shown first: P(y better) read in order (y, x)."""
    bias: float
    """Log-odds for the first slot subtracted from both orders (0 when calibration is off)."""
    p_x: float
    """Order-averaged (and calibrated) probability that x is better."""
    consistent: bool
    """Both orders pick the same winner, raw probabilities."""
    consistent_calibrated: bool
    """Both orders pick the same winner after removing the bias."""
    winner: str | None
    """"x", "y", or None for a dropped pair."""
    reason: str | None
    """Why the pair was dropped: "inconsistent", "uncertain" or "identical"; None when kept."""
    option_mass: float
    """Mean probability mass on the two option tokens; low values mean the judge wanted to say something else."""

    @property
    def kept(self) -> bool:
        return self.winner is not None

    def to_dict(self) -> dict:
        return {**asdict(self), "kept": self.kept}


def position_bias(pairs: list[tuple[float, float]]) -> float:
    """Mean log-odds of the first slot over both orders of every pair: the judge's constant lean."""
    if not pairs:
        return 0.0
    return sum(logit(a) + logit(b) for a, b in pairs) / (2 * len(pairs))


def decide(
    principle: str,
    p_first_xy: float,
    p_first_yx: float,
    bias: float,
    min_confidence: float,
    require_consistent: bool,
    option_mass: float = 1.0,
) -> Verdict:
    """Combine the two orders into a verdict (pure)."""
    consistent = (p_first_xy > 0.5) == (p_first_yx < 0.5) and p_first_xy != 0.5
    cal_xy = sigmoid(logit(p_first_xy) - bias)
    cal_yx = sigmoid(logit(p_first_yx) - bias)
    consistent_cal = (cal_xy > 0.5) == (cal_yx < 0.5) and cal_xy != 0.5
    p_x = (cal_xy + (1 - cal_yx)) / 2
    winner, reason = ("x" if p_x > 0.5 else "y"), None
    if require_consistent and not consistent_cal:
        winner, reason = None, "inconsistent"
    elif max(p_x, 1 - p_x) < min_confidence or p_x == 0.5:
        winner, reason = None, "uncertain"
    return Verdict(
        principle, p_first_xy, p_first_yx, bias, p_x, consistent, consistent_cal, winner, reason, option_mass
    )


def option_token_ids(tokenizer, answer_prefix: str, options: tuple[str, str]) -> tuple[int, int]:
    """The first token of each option as it follows the answer prefix (tokenizers merge across the seam,
    so the option is tokenized in context, not alone)."""
    base = tokenizer(answer_prefix, add_special_tokens=False).input_ids
    ids = []
    for opt in options:
        full = tokenizer(answer_prefix + opt, add_special_tokens=False).input_ids
        if full[: len(base)] != base or len(full) == len(base):
            raise ValueError(f"judge option {opt!r} does not tokenize as a continuation of {answer_prefix!r}")
        ids.append(full[len(base)])
    if ids[0] == ids[1]:
        raise ValueError(f"judge options {options!r} start with the same token")
    return ids[0], ids[1]


class TransformersScorer:
    """Option log-probs from a transformers model: one batched forward per chunk, last position only."""

    def __init__(self, model, tokenizer, batch_size: int):
        self.model, self.pad, self.batch_size = model, tokenizer.pad_token_id, batch_size

    def option_logprobs(self, prompts: list[list[int]], options: tuple[int, int], progress: Progress):
        import torch

        out: list[tuple[float, float] | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.tensor(
                [[self.pad] * (width - len(prompts[i])) + prompts[i] for i in idx], device=device
            )
            mask = torch.tensor(
                [[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx], device=device
            )
            # left padding: give real tokens positions 0..n-1 so each row sees what it would see alone
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1
                ).logits
            logp = torch.log_softmax(logits[:, -1, :].float(), dim=-1)
            for row, i in enumerate(idx):
                out[i] = (logp[row, options[0]].item(), logp[row, options[1]].item())
            progress.advance(len(idx))
        return out


class VLLMScorer:
    """Option log-probs from a vLLM engine: one decoding step per prompt, the options read from the next
    token's top log-probs (raw, exact values); an option outside the top k is read from vLLM's prompt
    log-probs of prompt + option instead, so every value is exact."""

    def __init__(self, engine, chunk: int = 64):
        self.engine, self.chunk = engine, chunk

    def option_logprobs(self, prompts: list[list[int]], options: tuple[int, int], progress: Progress):
        out = []
        for start in range(0, len(prompts), self.chunk):
            batch = prompts[start : start + self.chunk]
            out.extend(self.engine.request("option_logprobs", (batch, options)))
            progress.advance(len(batch))
        return out


class OpenAIScorer:
    """Option log-probs from an OpenAI-compatible completions endpoint (`vllm serve`, or a provider).

    The prompt is rendered here with the judge model's chat template and sent as text with max_tokens=1 and
    the top log-probs of the next token; an option outside the top `top_logprobs` counts as log-prob -30
    (the option mass in the judgement shows when that happens)."""

    FLOOR = -30.0

    def __init__(self, tokenizer, option_texts: tuple[str, str], config, workers: int = 8):
        import os

        self.tokenizer, self.option_texts, self.config, self.workers = (
            tokenizer,
            option_texts,
            config,
            workers,
        )
        self.base_url = config.base_url.rstrip("/")
        self.api_key = os.environ.get(config.api_key_env, "")
        self.model = config.api_model or self._first_model()

    def _http(self, path: str, body: dict | None = None) -> dict:
        import json
        import urllib.error
        import urllib.request

        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(
                f"judge endpoint {self.base_url}{path}: HTTP {e.code}: {e.read()[:500]!r}"
            ) from None
        except urllib.error.URLError as e:
            raise RuntimeError(f"judge endpoint {self.base_url}{path} unreachable: {e.reason}") from None

    def _first_model(self) -> str:
        models = self._http("/models").get("data", [])
        if not models:
            raise RuntimeError(f"judge endpoint {self.base_url} lists no models; set judge.api_model")
        return models[0]["id"]

    def _one(self, ids: list[int]) -> tuple[float, float]:
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        body = {
            "model": self.model,
            "prompt": text,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": self.config.top_logprobs,
        }
        choice = self._http("/completions", body)["choices"][0]
        top = (choice.get("logprobs") or {}).get("top_logprobs") or [{}]
        first = top[0] or {}
        return tuple(max(first.get(o, self.FLOOR), self.FLOOR) for o in self.option_texts)

    def option_logprobs(self, prompts: list[list[int]], options: tuple[int, int], progress: Progress):
        from concurrent.futures import ThreadPoolExecutor

        out = []
        with ThreadPoolExecutor(self.workers) as pool:
            for result in pool.map(self._one, prompts):
                out.append(result)
                progress.advance(1)
        return out


class PairwiseJudge:
    """Judges many (conversation, x, y, principle) items in both orders, with any scorer above."""

    def __init__(self, scorer, tokenizer, template: JudgeTemplate, config):
        self.scorer, self.tokenizer, self.template, self.config = scorer, tokenizer, template, config
        self.options = option_token_ids(tokenizer, template.answer_prefix, template.options)
        self.truncated = 0

    def _encode(self, principle: Principle, conversation: str, first: str, second: str) -> list[int]:
        tok = self.tokenizer

        def ids_for(conv: str) -> list[int]:
            messages, prefix = build_messages(self.template, principle, conv, first, second)
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefix
            return tok(text, add_special_tokens=False).input_ids

        ids = ids_for(conversation)
        over = len(ids) - self.config.max_length
        if over > 0:
            # cut the conversation from the left; the responses under judgement stay whole
            conv_ids = tok(conversation, add_special_tokens=False).input_ids
            keep = max(0, len(conv_ids) - over - 8)
            ids = ids_for("..." + tok.decode(conv_ids[len(conv_ids) - keep :]))
            self.truncated += 1
        return ids

    def judge(self, items: list[dict], progress: Progress = SILENT) -> list[Verdict]:
        """items: {"conversation", "x", "y", "principle": Principle}. Returns one Verdict per item."""
        encoded = []
        for it in items:
            encoded.append(self._encode(it["principle"], it["conversation"], it["x"], it["y"]))
            encoded.append(self._encode(it["principle"], it["conversation"], it["y"], it["x"]))
        progress.stage("judge", len(encoded))
        lps = self.scorer.option_logprobs(encoded, self.options, progress)
        # renormalised over the two options: P(first) = e^la / (e^la + e^lb)
        probs = [(sigmoid(la - lb), math.exp(la) + math.exp(lb)) for la, lb in lps]
        pairs = [(probs[2 * k][0], probs[2 * k + 1][0]) for k in range(len(items))]
        bias = position_bias(pairs) if self.config.calibrate else 0.0
        return [
            decide(
                it["principle"].id,
                pairs[k][0],
                pairs[k][1],
                bias,
                self.config.min_confidence,
                self.config.require_consistent,
                (probs[2 * k][1] + probs[2 * k + 1][1]) / 2,
            )
            for k, it in enumerate(items)
        ]
