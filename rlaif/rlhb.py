"""RLHB, adversarial alignment from online human behaviour (Jiang, Yan, Shi, Yin, "The Real, the Better: Aligning
LLMs with Online Human Behaviors", arXiv:2405.00578), on this project's parts.

- The **discriminator** tells real (query, response, behaviour) triplets of a behaviour log from fakes: a logistic
  head on the frozen features of the run's first model (rlaif/reward/features.py), read over the chat-templated
  query with the behaviour text appended and the response. Warm-up fakes swap in another record's behaviour text;
  from then on the round's generations (the policy's answers to queries conditioned on the desired behaviour) are
  fakes too, and a share of the best of them (`rlhb.demo_share`, by the previous discriminator) are kept as online
  demonstrations, labelled real. The paper saw the discriminator collapse (reward -> 1 for everything) at a 50%
  share: `collapse_check` stops the run when the held-out real and generated triplets both score above
  `rlhb.collapse`.
- The **generator** is the policy, prompted with the query and the desired behaviour text, trained by the rl stage
  with `rl.reward = "discriminator"`: the logit of the round's discriminator on (query, response, desired
  behaviour), beside the KL penalty.
- **RLHB-C**, the paper's baseline, is a pointwise behaviour predictor (`BehaviourPredictor`): one ridge head per
  count (log(1 + views), clicks, likes, dislikes) on the frozen features of (query, response); its heads combine
  into one reward, (likes - dislikes) / (views + clicks) on the predicted counts (`rl.reward = "behaviour"`).

Data: RUN/feedback/behaviour.jsonl and RUN/feedback/rlhb-prompts.jsonl from `rlaif feedback import`.

    rlaif run runs/rlhb --rounds 2      # round.stages = ["generate", "discriminator", "rl", "merge"]
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlaif.applicability import fit_logistic
from rlaif.data import DataError, fresh_dir, replace_dir
from rlaif.models import resolve_model
from rlaif.progress import SILENT, Progress
from rlaif.reward.features import extract

SPEC = "discriminator.json"
RECEPTION = "How readers received the answer: {behaviour}"
ASK = "{query}\n\n(Write the answer so that: {behaviour})"


def last_user_turn(query) -> str:
    """A query as one request: the string, or the last user message of a conversation."""
    if isinstance(query, str):
        return query
    return next((m["content"] for m in reversed(query) if m.get("role") == "user"), query[-1]["content"])


def generator_prompt(query, behaviour: str) -> str:
    """What the generator is asked: the request with the desired behaviour text (RLHB's conditioning)."""
    return ASK.format(query=last_user_turn(query), behaviour=behaviour)


def triplet_rows(tokenizer, triplets: list[tuple], max_length: int) -> list[tuple[list[int], int]]:
    """(token ids, response start) of each (query, response, behaviour): the query with the behaviour text as a
    user turn, the response as the assistant's; the start is cut from the left to fit."""
    rows = []
    for query, response, behaviour in triplets:
        user = f"{last_user_turn(query)}\n\n{RECEPTION.format(behaviour=behaviour)}"
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        p = tokenizer(prompt, add_special_tokens=False).input_ids
        r = tokenizer(response, add_special_tokens=False).input_ids[: max_length - 1]
        room = max_length - len(r)
        p = p[-room:] if room < len(p) else p
        rows.append((p + r, len(p)))
    return rows


def swapped_fakes(records: list[dict], seed: int) -> list[tuple]:
    """A fake per real record (pure but for the seed): its query and response with another record's behaviour
    text (a different one; records whose text no other record differs from are skipped)."""
    rng = random.Random(f"{seed}:swap")
    texts = [r["behaviour"] for r in records]
    out = []
    for r in records:
        others = [t for t in texts if t != r["behaviour"]]
        if others:
            out.append((r["query"], r["response"], rng.choice(others)))
    return out


@dataclass
class DiscriminatorSpec:
    base: str
    max_length: int = 384
    figures: dict = field(default_factory=dict)
    schema: int = 1


def fit(real_f, fake_f, l2: float = 1.0):
    """(w, b) of a logistic head: real 1, fake 0 (applicability's fit on standardised features)."""
    import torch

    f = torch.cat([real_f, fake_f])
    y = torch.tensor([1] * len(real_f) + [0] * len(fake_f))
    return fit_logistic(f, y, l2)


def probabilities(f, w, b) -> list[float]:
    import torch

    return torch.sigmoid(f @ w + b).tolist() if len(f) else []


def collapse_check(p_real: list[float], p_generated: list[float], threshold: float) -> str | None:
    """A message when the discriminator calls both the held-out real and the generated triplets real (mean
    probability above `threshold`): its reward no longer separates anything (RLHB's collapse)."""
    if not p_real or not p_generated:
        return None
    mr, mg = sum(p_real) / len(p_real), sum(p_generated) / len(p_generated)
    if mr >= threshold and mg >= threshold:
        return (
            f"the discriminator collapsed: it scores held-out real triplets {mr:.2f} and generated ones {mg:.2f} "
            f"(both above rlhb.collapse = {threshold}), so its reward is the same for everything. Lower "
            "rlhb.demo_share (the paper saw this at 0.5) or raise the number of real records, then run the same "
            "command again"
        )
    return None


def save(folder: Path, w, b, spec: DiscriminatorSpec) -> None:
    from safetensors.torch import save_file

    tmp = fresh_dir(folder.with_name(folder.name + ".tmp"))
    save_file({"weight": w.contiguous(), "bias": b.reshape(1).contiguous()}, str(tmp / "head.safetensors"))
    (tmp / SPEC).write_text(json.dumps(asdict(spec), indent=2))
    replace_dir(tmp, folder)


class Discriminator:
    """P(real) and its logit for (query, response, behaviour) triplets; the body is borrowed from a ModelPool."""

    def __init__(self, folder: str | Path, pool, batch_size: int = 8):
        from safetensors.torch import load_file

        self.folder = Path(folder)
        if not (self.folder / SPEC).is_file():
            raise DataError(
                f"{self.folder}: no discriminator here (no {SPEC}): run the discriminator stage first"
            )
        self.spec = DiscriminatorSpec(**json.loads((self.folder / SPEC).read_text()))
        head = load_file(str(self.folder / "head.safetensors"))
        self.w, self.b = head["weight"], head["bias"]
        self.pool, self.batch_size = pool, batch_size

    def features(self, triplets: list[tuple], progress: Progress = SILENT):
        model, tok = self.pool.model(resolve_model(self.spec.base))
        return extract(
            model, tok, triplet_rows(tok, triplets, self.spec.max_length), self.batch_size, progress
        )

    def logits(self, triplets: list[tuple], progress: Progress = SILENT) -> list[float]:
        if not triplets:
            return []
        return (self.features(triplets, progress) @ self.w + self.b).tolist()


# -- RLHB-C: the pointwise behaviour predictor -------------------------------------------------------------


PREDICTOR = "predictor.json"
PREDICTED = ("views", "clicks", "likes", "dislikes")


def ridge(f, y, l2: float):
    """(w, b) minimising |f w + b - y|^2 / n + l2 |w|^2 on standardised features, folded back (closed form)."""
    import torch

    mu, sd = f.double().mean(0), f.double().std(0).clamp(min=1e-6)
    z = (f.double() - mu) / sd
    n, d = z.shape
    zc, yc = z - z.mean(0), y.double() - y.double().mean()
    w = torch.linalg.solve(zc.T @ zc / n + l2 * torch.eye(d, dtype=torch.float64), zc.T @ yc / n)
    b = y.double().mean() - z.mean(0) @ w
    return (w / sd).float(), (b - (mu / sd) @ w).float()


def combined_reward(pred_log1p: dict[str, float]) -> float:
    """RLHB-C's reward from predicted log(1 + count)s: (likes - dislikes) / (views + clicks), the counts back
    from log space (pure)."""
    c = {k: math.expm1(max(0.0, v)) for k, v in pred_log1p.items()}
    return (c["likes"] - c["dislikes"]) / max(1.0, c["views"] + c["clicks"])


class BehaviourPredictor:
    """RLHB-C: predicted log(1 + count) per behaviour of (query, response) pairs, and their combined reward."""

    def __init__(self, folder: str | Path, pool, batch_size: int = 8):
        from safetensors.torch import load_file

        self.folder = Path(folder)
        spec = json.loads((self.folder / PREDICTOR).read_text())
        self.base, self.max_length = spec["base"], spec["max_length"]
        self.heads = load_file(str(self.folder / "heads.safetensors"))
        self.pool, self.batch_size = pool, batch_size

    def predict(self, pairs: list[tuple], progress: Progress = SILENT) -> list[dict[str, float]]:
        model, tok = self.pool.model(resolve_model(self.base))
        rows = triplet_rows(tok, [(q, r, "(unknown)") for q, r in pairs], self.max_length)
        f = extract(model, tok, rows, self.batch_size, progress)
        cols = {k: (f @ self.heads[f"{k}.weight"] + self.heads[f"{k}.bias"]).tolist() for k in PREDICTED}
        return [{k: cols[k][i] for k in PREDICTED} for i in range(len(pairs))]

    def rewards(self, pairs: list[tuple], progress: Progress = SILENT) -> list[float]:
        return [combined_reward(p) for p in self.predict(pairs, progress)]


def train_predictor(
    records: list[dict], base: str, out: Path, pool, max_length: int, progress: Progress = SILENT
):
    """Fit RLHB-C's heads (ridge, l2 = 1) on the records' counts; writes heads.safetensors and predictor.json."""
    import torch
    from safetensors.torch import save_file

    model, tok = pool.model(resolve_model(base))
    usable = [r for r in records if all(k in r.get("counts", {}) for k in PREDICTED)]
    if len(usable) < 4:
        raise DataError("RLHB-C needs records with views, clicks, likes and dislikes counts (at least 4)")
    rows = triplet_rows(tok, [(r["query"], r["response"], "(unknown)") for r in usable], max_length)
    f = extract(model, tok, rows, 8, progress)
    heads, fit_r2 = {}, {}
    for k in PREDICTED:
        y = torch.tensor([math.log1p(r["counts"][k]) for r in usable])
        w, b = ridge(f, y, 1.0)
        heads[f"{k}.weight"], heads[f"{k}.bias"] = w.contiguous(), b.reshape(1).contiguous()
        pred = f @ w + b
        fit_r2[k] = float(1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum().clamp(min=1e-9))
    tmp = fresh_dir(out.with_name(out.name + ".tmp"))
    save_file(heads, str(tmp / "heads.safetensors"))
    (tmp / PREDICTOR).write_text(
        json.dumps(
            {"base": base, "max_length": max_length, "records": len(usable), "train_r2": fit_r2}, indent=2
        )
    )
    replace_dir(tmp, out)
    return {"records": len(usable), "train_r2": fit_r2}
