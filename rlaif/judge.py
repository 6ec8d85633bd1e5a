"""The constitutional judge: which of two responses better follows a principle (Constitutional AI,
arXiv:2212.08073, the RL-CAI feedback step). Three modes (`judge.mode`):

- `pointwise`: each response is scored alone, P(Yes) to the principle's yes/no `check` question, and
  P(x better) = sigmoid(logit P(Yes | x) - logit P(Yes | y)) (Bradley-Terry on the two scores). Position
  cannot bias it, and it was the most accurate mode on human labels with the embedded model (README).
- `logprob`: pairwise, described below.
- `rationale`: pairwise, the judge writes a short reasoning and ends with "Answer: A" or "Answer: B" (the
  chain-of-thought variant of the paper). The verdict line is parsed strictly (`parse_rationale`); a reply
  without one is dropped as "unparsed", never guessed. Rationales are kept with the verdict.

A pair can be judged under k principles at once (`judge.principles_per_pair`, an ensemble): the members'
log-odds are averaged per order (votes, for rationales) before the verdict.

Responses are untrusted text inside the judge prompt. With `judge.harden` (default), text in them that looks
like the template's own markers ("[End of response A]") or the tokenizer's special tokens ("<|im_end|>") is
defused before tokenizing, so a response cannot close its slot or open a new chat turn.

In logprob mode, for a pair (x, y) the judge reads the next-token probabilities of the two answer options right after the
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

import dataclasses
import math
import re
from dataclasses import asdict, dataclass

from rlaif.principles import JudgeTemplate, Principle
from rlaif.progress import SILENT, Progress

_PLACEHOLDER = re.compile(r"\{(question|conversation|response_a|response_b|response|check)\}")
_MARKER = re.compile(r"\[[^\[\]{}\n]{1,40}\]")


def render(template: str, values: dict[str, str]) -> str:
    """Fill {placeholders} in one pass: text inside a value is never re-scanned, so a response that
    contains "{response_b}" stays literal text."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def build_messages(
    template: JudgeTemplate, principle: Principle, conversation: str, first: str, second: str = ""
):
    """Chat messages for one judge prompt, and the assistant text that precedes the answer option.
    Pairwise modes show `first` and `second`; pointwise shows `first` alone."""
    values = {
        "question": principle.question,
        "check": principle.check,
        "conversation": conversation,
        "response_a": first,
        "response_b": second,
        "response": first,
    }
    messages = [{"role": "user", "content": render(template.user, values)}]
    if template.system:
        messages.insert(0, {"role": "system", "content": template.system})
    prefix = "" if template.mode == "rationale" else template.answer_prefix
    return messages, prefix


def template_markers(template: JudgeTemplate) -> list[str]:
    """The bracketed markers a template delimits its slots with, e.g. "[End of response A]"."""
    markers = set(_MARKER.findall(template.user))
    for m in list(markers):  # "[Response A]" also guards "[Response B]", "[Response C]" ...
        if re.search(r" [A-Z]\]$", m):
            markers.update(m[:-2] + c + "]" for c in "ABCDEFGH")
    return sorted(markers, key=len, reverse=True)


def harden(text: str, markers: list[str], specials: list[str]) -> str:
    """Defuse untrusted text before it enters a judge prompt: the template's slot markers become
    parenthesised (so a response cannot end its own slot), special-token strings get a space after their
    first character (so they tokenize as plain text, not as a new chat turn). Pure; other text is unchanged."""
    for s in specials:
        if s and s in text:
            text = text.replace(s, s[0] + " " + s[1:])
    for m in markers:
        if m.lower() in text.lower():
            text = re.sub(re.escape(m), "(" + m[1:-1] + ")", text, flags=re.IGNORECASE)
    return text


def parse_rationale(text: str, answer_prefix: str, options: tuple[str, str]) -> int | None:
    """The option a rationale ends on: 0 (first) or 1 (second), or None when it does not end on exactly one.

    Strict on purpose: the last non-empty line must be the verdict ("Answer: A", optionally bold, bracketed
    or with a full stop), and no earlier verdict line may name the other option. Anything else (no verdict,
    two verdicts, a verdict mid-sentence) is None: a guessed verdict would be training data nobody judged."""
    opts = "|".join(re.escape(o.strip()) for o in options)
    verdict = re.compile(
        r"^\W{0,3}" + re.escape(answer_prefix.strip()) + r"\**\s*[\(\[]?(" + opts + r")[\)\]]?\W{0,3}$",
        re.IGNORECASE,
    )
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    last = verdict.match(lines[-1])
    if not last:
        return None
    names = [o.strip().lower() for o in options]
    picked = names.index(last.group(1).lower())
    for ln in lines[:-1]:
        m = verdict.match(ln)
        if m and names.index(m.group(1).lower()) != picked:
            return None
    return picked


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
    mode: str = "logprob"
    score_x: float | None = None
    """pointwise: P(Yes) for x alone (mean log-odds over an ensemble's principles)."""
    score_y: float | None = None
    rationale_xy: tuple[str, ...] = ()
    """rationale: what the judge wrote with x shown first, one per principle."""
    rationale_yx: tuple[str, ...] = ()

    @property
    def kept(self) -> bool:
        return self.winner is not None

    def swapped(self) -> Verdict:
        """The same verdict with x and y exchanged."""
        return Verdict(
            self.principle,
            self.p_first_yx,
            self.p_first_xy,
            self.bias,
            1 - self.p_x,
            self.consistent,
            self.consistent_calibrated,
            {"x": "y", "y": "x", None: None}[self.winner],
            self.reason,
            self.option_mass,
            self.mode,
            self.score_y,
            self.score_x,
            self.rationale_yx,
            self.rationale_xy,
        )

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


def decide_pointwise(
    principle: str, score_x: float, score_y: float, min_confidence: float, option_mass: float = 1.0
) -> Verdict:
    """Verdict from two independent P(Yes) scores: P(x better) = sigmoid(logit s_x - logit s_y) (pure).
    Position plays no part, so both "orders" are the same reading and always consistent."""
    p_x = sigmoid(logit(score_x) - logit(score_y))
    winner, reason = ("x" if p_x > 0.5 else "y"), None
    if max(p_x, 1 - p_x) < min_confidence or p_x == 0.5:
        winner, reason = None, "uncertain"
    return Verdict(
        principle,
        p_x,
        1 - p_x,
        0.0,
        p_x,
        True,
        True,
        winner,
        reason,
        option_mass,
        "pointwise",
        score_x,
        score_y,
    )


def bradley_terry(n: int, comparisons: list[tuple[int, int, float]], prior: float = 0.1, iters: int = 200):
    """Log-strengths of n items from soft pairwise outcomes (i, j, P(i beats j)), by the MM algorithm
    (Hunter 2004). `prior` adds that many virtual half-wins per compared pair each way, so an item that
    won or lost everything keeps a finite score. Returns scores centred on 0; equal evidence, equal scores."""
    wins = [0.0] * n
    games: dict[tuple[int, int], float] = {}
    for i, j, p in comparisons:
        wins[i] += p + prior / 2
        wins[j] += 1 - p + prior / 2
        key = (min(i, j), max(i, j))
        games[key] = games.get(key, 0.0) + 1 + prior
    s = [1.0] * n
    for _ in range(iters):
        denom = [0.0] * n
        for (i, j), g in games.items():
            denom[i] += g / (s[i] + s[j])
            denom[j] += g / (s[i] + s[j])
        new = [wins[i] / denom[i] if denom[i] > 0 else s[i] for i in range(n)]
        total = math.exp(sum(math.log(v) for v in new) / n)
        new = [v / total for v in new]
        done = max(abs(a - b) for a, b in zip(new, s, strict=True)) < 1e-10
        s = new
        if done:
            break
    return [math.log(v) for v in s]


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
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.pad = tokenizer.pad_token_id

    def generate(self, prompts: list[list[int]], max_new_tokens: int, progress: Progress) -> list[str]:
        """Greedy replies (rationale mode), batched with left padding, in the caller's order."""
        import torch

        from rlaif.generate.hf import eos_ids

        stop = eos_ids(self.tokenizer, self.model)
        out: list[str | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.tensor([[self.pad] * (width - len(prompts[i])) + prompts[i] for i in idx])
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx])
            with torch.inference_mode():
                gen = self.model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.pad,
                    eos_token_id=sorted(stop),
                )
            for row, i in enumerate(idx):
                seq = gen[row, width:].tolist()
                end = next((k for k, t in enumerate(seq) if t in stop), len(seq))
                out[i] = self.tokenizer.decode(seq[:end], skip_special_tokens=True)
            progress.advance(len(idx))
        return out

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

    def __init__(self, engine, tokenizer=None, chunk: int = 64):
        self.engine, self.tokenizer, self.chunk = engine, tokenizer, chunk

    def generate(self, prompts: list[list[int]], max_new_tokens: int, progress: Progress) -> list[str]:
        out = []
        for start in range(0, len(prompts), self.chunk):
            batch = prompts[start : start + self.chunk]
            outs = self.engine.request("generate", (batch, 1, 0.0, 1.0, max_new_tokens, [0] * len(batch)))
            out.extend(self.tokenizer.decode(group[0][0], skip_special_tokens=True) for group in outs)
            progress.advance(len(batch))
        return out

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

    def _reply(self, ids: list[int], max_tokens: int) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        body = {"model": self.model, "prompt": text, "max_tokens": max_tokens, "temperature": 0.0}
        return self._http("/completions", body)["choices"][0]["text"]

    def generate(self, prompts: list[list[int]], max_new_tokens: int, progress: Progress) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        out = []
        with ThreadPoolExecutor(self.workers) as pool:
            for result in pool.map(lambda ids: self._reply(ids, max_new_tokens), prompts):
                out.append(result)
                progress.advance(1)
        return out

    def option_logprobs(self, prompts: list[list[int]], options: tuple[int, int], progress: Progress):
        from concurrent.futures import ThreadPoolExecutor

        out = []
        with ThreadPoolExecutor(self.workers) as pool:
            for result in pool.map(self._one, prompts):
                out.append(result)
                progress.advance(1)
        return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


class Judge:
    """Judges many (conversation, x, y, principles) items in the configured mode, with any scorer above.

    items: {"conversation": str, "x": str, "y": str, "principles": tuple[Principle, ...]} (or "principle":
    one Principle). Returns one Verdict per item, in order."""

    def __init__(self, scorer, tokenizer, constitution, config):
        self.scorer, self.tokenizer, self.config = scorer, tokenizer, config
        self.mode = config.mode
        self.template = constitution.template_for(self.mode)
        if self.mode == "pointwise":
            missing = [p for p in constitution.principles if not p.check]
            if missing:
                from rlaif.principles import PrincipleError, Problem

                raise PrincipleError(
                    [
                        Problem(p.path or p.id, "check", "required for judge.mode = 'pointwise'")
                        for p in missing
                    ]
                )
        self.options = (
            None
            if self.mode == "rationale"
            else option_token_ids(tokenizer, self.template.answer_prefix, self.template.options)
        )
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

    def _encode(self, principle: Principle, conversation: str, first: str, second: str = "") -> list[int]:
        tok = self.tokenizer
        first, second = self._safe(first), self._safe(second)

        def ids_for(conv: str) -> list[int]:
            messages, prefix = build_messages(self.template, principle, conv, first, second)
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
            pid = "+".join(p.id for p in ps)
            if not v_xy or not v_yx:
                v = Verdict(pid, 0.5, 0.5, 0.0, 0.5, False, False, None, "unparsed", 0.0, "rationale")
            else:
                v = decide(
                    pid,
                    _mean(v_xy),
                    _mean(v_yx),
                    0.0,
                    self.config.min_confidence,
                    self.config.require_consistent,
                )
                v = dataclasses.replace(v, mode="rationale", option_mass=1.0)
            out.append(dataclasses.replace(v, rationale_xy=tuple(r_xy), rationale_yx=tuple(r_yx)))
        return out
