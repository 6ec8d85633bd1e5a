"""Bradley-Terry reward models: a language model's final hidden states read by a linear head, one scalar per
(conversation, response), trained on preference pairs with -log sigmoid(r(x, y_w) - r(x, y_l)) (the reward
model of RLHF, arXiv:2203.02155; its labels may come from people, an AI judge, or both).

The head reads two features of the response: the final hidden state of its last token (the EOS token it ends
on) and the mean of the final hidden states over its tokens. Two ways to train it:

- `frozen`: the body is not trained. Each sequence's features are computed once (and cached on disk), and the
  head is fitted on them by full-batch L-BFGS with an L2 penalty chosen by cross-validation on the training
  pairs: seconds after the features, on a CPU.
- `lora`: LoRA on the body and the head trained together on the shared trainer loop (rlaif/trainer.py).

With `principle_conditioned` (SALMON, arXiv:2310.05910) the principle's text goes into the input as a system
message, so one reward model scores under any principle of the constitution.

A reward model is a folder: `reward.json` (its base model, mode, features, what it was trained on) and
`head.safetensors` (and `adapter/` for lora). The shipped one, `smollm2-135m-harmless` (rlaif/heads/), is a
frozen-body head on the embedded model trained on ../shared/data/hh-harmless-train.jsonl.

    rlaif rm train --pairs ../shared/data/hh-harmless-train.jsonl --model smollm2-135m-instruct --out rm/
    rlaif rm eval --model rm/ --data ../shared/data/hh-harmless-dev.jsonl
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlaif.data import DataError, clear, fresh_dir, replace_dir, temp_name
from rlaif.progress import SILENT, Progress

HEADS_DIR = Path(__file__).resolve().parent / "heads"
"""Reward heads shipped with the package, by name."""


@dataclass
class RewardSpec:
    base: str
    """The body: a model path, hub id, or the embedded model's name."""
    mode: str = "frozen"
    """"frozen" (a head on fixed features), "lora" (LoRA on the body, trained with the head) or
    "conditioned" (heads on fixed features mixed by the principle's text; rlaif/instructable.py)."""
    principle_conditioned: bool = False
    max_length: int = 512
    """Conversation + response tokens; the conversation is cut from the left."""
    trained_on: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    """What training reported (pairs, penalty, cross-validated accuracy, seconds)."""
    schema: int = 1


def resolve_reward_model(name: str) -> Path:
    """A reward model folder, or the name of a shipped one."""
    path = Path(name).expanduser()
    if (path / "reward.json").is_file():
        return path
    if "/" not in name and name not in (".", "..") and (HEADS_DIR / name / "reward.json").is_file():
        return HEADS_DIR / name
    shipped = sorted(p.parent.name for p in HEADS_DIR.glob("*/reward.json"))
    what = "no such folder" if not path.exists() else "no reward.json in it"
    raise DataError(
        f"{name}: not a reward model ({what}); give a folder written by `rlaif rm train` or a shipped one: "
        f"{', '.join(shipped) or 'none'}"
    )


def load_spec(folder: Path) -> RewardSpec:
    try:
        raw = json.loads((Path(folder) / "reward.json").read_text())
        return RewardSpec(**raw)
    except (OSError, ValueError, TypeError) as e:
        raise DataError(f"{folder}/reward.json: damaged ({e})") from None


# -- encoding and features ------------------------------------------------------------------------------


def messages_for(conversation, principle: str | None = None) -> list[dict]:
    """A conversation (a user message, or chat messages) as the messages before the response; a principle,
    when given, goes first as a system message."""
    messages = (
        [{"role": "user", "content": conversation}] if isinstance(conversation, str) else list(conversation)
    )
    if principle:
        messages = [{"role": "system", "content": f"Judge the reply by this principle: {principle}"}] + [
            m for m in messages if m["role"] != "system"
        ]
    return messages


def encode(tokenizer, conversation, response: str, max_length: int, principle: str | None = None):
    """(token ids, response start): the chat-templated conversation, then the response and EOS. A long
    conversation loses its start; the response is kept (its end, if even it is too long)."""
    prompt_text = tokenizer.apply_chat_template(
        messages_for(conversation, principle), tokenize=False, add_generation_prompt=True
    )
    prompt = tokenizer(prompt_text, add_special_tokens=False).input_ids
    resp = (tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id])[
        -(max_length - 1) :
    ]
    room = max_length - len(resp)
    prompt = prompt[-room:] if room < len(prompt) else prompt
    return prompt + resp, len(prompt)


def body_of(model):
    """The transformer under a causal LM's output layer (its final hidden states are what the head reads)."""
    return getattr(model, model.base_model_prefix, model)


def features(model, rows: list[tuple[list[int], int]], pad_id: int, side: str = "right"):
    """(B, 2 * hidden) features of padded rows in one forward pass: the final hidden state at each row's last
    real token, and the mean over its response tokens. Padding (on either `side`) never enters either: real
    tokens get positions 0..n-1 and the attention mask hides the pads."""
    import torch

    device = next(model.parameters()).device
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    resp = torch.zeros((len(rows), width), dtype=torch.float32)
    last = torch.zeros(len(rows), dtype=torch.long)
    for r, (seq, start) in enumerate(rows):
        off = width - len(seq) if side == "left" else 0
        ids[r, off : off + len(seq)] = torch.tensor(seq)
        attn[r, off : off + len(seq)] = 1
        resp[r, off + start : off + len(seq)] = 1
        last[r] = off + len(seq) - 1
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    hidden = body_of(model)(
        input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=positions.to(device)
    ).last_hidden_state.float()
    at_last = hidden[torch.arange(len(rows)), last.to(device)]
    resp = resp.to(device)
    mean = (hidden * resp[..., None]).sum(1) / resp.sum(-1, keepdim=True)
    return torch.cat([at_last, mean], dim=-1)


def extract(
    model, tokenizer, rows: list[tuple[list[int], int]], batch_size: int = 8, progress: Progress = SILENT
):
    """Features of every row, in batches of similar length, in the rows' order (no gradients)."""
    import torch

    out = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    progress.stage("reward features", len(rows))
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            f = features(model, [rows[i] for i in idx], tokenizer.pad_token_id).cpu()
            for k, i in enumerate(idx):
                out[i] = f[k]
            progress.advance(len(idx))
    return torch.stack(out) if out else torch.zeros(0)


# -- fitting a head on fixed features -------------------------------------------------------------------


def fit_head(fc, fr, l2: float, margin: float = 0.0, centring: float = 0.0, iters: int = 200):
    """A linear head (w, b) on features, minimising the mean Bradley-Terry loss of the pairs (chosen features
    `fc`, rejected `fr`) plus l2 * |w|^2, by full-batch L-BFGS on standardised features (then folded back, so
    the head reads raw features). Deterministic."""
    import torch

    from rlaif.losses import bradley_terry_loss

    both = torch.cat([fc, fr]).double()
    mu, sd = both.mean(0), both.std(0).clamp(min=1e-6)
    zc, zr = (fc.double() - mu) / sd, (fr.double() - mu) / sd
    w, b = lbfgs_linear(
        fc.shape[1],
        lambda w, b: bradley_terry_loss(zc @ w + b, zr @ w + b, margin, centring).mean() + l2 * (w * w).sum(),
        iters,
    )
    return (w / sd).float(), (b - (mu / sd) @ w).float()


def lbfgs_linear(dim: int, objective, iters: int = 200):
    """(w, b) of a linear score minimising `objective(w, b)` by full-batch L-BFGS from zero (deterministic);
    the heads of rlaif/reward.py and rlaif/applicability.py fit this way on standardised features."""
    import torch

    w = torch.zeros(dim, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure():
        opt.zero_grad()
        loss = objective(w, b)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def cross_validate(fc, fr, penalties: list[float], folds: int = 5, seed: int = 0, **kw) -> dict[float, float]:
    """Accuracy of each L2 penalty on held-out folds of the training pairs (the dev file is never used)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(fc), generator=g)
    parts = [perm[i::folds] for i in range(folds)]
    out = {}
    for l2 in penalties:
        correct = 0
        for k in range(folds):
            held = parts[k]
            train = torch.cat([parts[j] for j in range(folds) if j != k])
            w, b = fit_head(fc[train], fr[train], l2, **kw)
            correct += int(((fc[held] @ w) > (fr[held] @ w)).sum())
        out[l2] = correct / len(fc)
    return out


# -- a reward model in use ------------------------------------------------------------------------------


class RewardModel:
    """Scores (conversation, response[, principle]) with a trained head over its body model, which it borrows
    from a ModelPool (so a judge and a policy on the same weights share them)."""

    def __init__(self, folder: str | Path, pool, batch_size: int = 8, cache: bool = False):
        from safetensors.torch import load_file

        from rlaif.models import resolve_model

        self.folder = resolve_reward_model(str(folder))
        self.spec = load_spec(self.folder)
        self.base = resolve_model(self.spec.base)
        self.pool, self.batch_size = pool, batch_size
        self.cache = cache
        """Keep the features of scored responses on disk ($RLAIF_CACHE/features), for `rlaif rm eval`: every
        frozen head on the same body reads the same features of a labelled set."""
        self.head = load_file(str(self.folder / "head.safetensors"))
        self.weight, self.bias = self.head["weight"], self.head["bias"]
        self._model = None
        self._reader = None

    @property
    def model(self):
        if self._model is None:
            model, _ = self.pool.model(self.base)
            if self.spec.mode == "lora":
                from peft import PeftModel

                model, _ = self.pool.take(self.base)  # adapted: no longer the pool's copy of the base
                attach_head(
                    model
                )  # the module the adapter saved its head with (head.safetensors holds it too)
                model = (
                    PeftModel.from_pretrained(model, str(self.folder / "adapter")).merge_and_unload().eval()
                )
            self._model = model
        return self._model

    @property
    def tokenizer(self):
        return self.pool.tokenizer(self.base)

    def rows(self, items) -> list[tuple[list[int], int]]:
        tok = self.tokenizer
        # the principle goes into the input (SALMON's prefix) unless the model reads it beside it
        prefix = self.spec.principle_conditioned and self.spec.mode != "conditioned"
        return [
            encode(tok, conv, resp, self.spec.max_length, principle if prefix else None)
            for conv, resp, principle in items
        ]

    def rewards(self, items: list[tuple], progress: Progress = SILENT) -> list[float]:
        """One reward per (conversation, response, principle text or None)."""
        rows = self.rows(items)
        if self.cache and self.spec.mode != "lora" and rows:
            from rlaif.models import cache_dir

            f = cached_features(
                self.model,
                self.tokenizer,
                rows,
                cache_dir() / "features",
                self.base,
                self.batch_size,
                progress,
            )
        else:
            f = extract(self.model, self.tokenizer, rows, self.batch_size, progress)
        if not len(f):
            return []
        if self.spec.mode == "conditioned":
            if self._reader is None:
                from rlaif.instructable import PrincipleReader

                self._reader = PrincipleReader(self.head, self.model, self.tokenizer, self.batch_size)
            return self._reader.rewards(f, [p for _, _, p in items], self.weight, self.bias)
        return (f @ self.weight.to(f.dtype) + self.bias.to(f.dtype)).tolist()


def save_head(folder: Path, weight, bias, spec: RewardSpec, extra: dict | None = None) -> None:
    """head.safetensors (weight, bias and any `extra` tensors) and reward.json, written to a temp folder and
    renamed into place together."""
    import os
    import shutil

    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = fresh_dir(folder.with_name(folder.name + ".tmp"))
    if (folder / "adapter").is_dir():
        shutil.copytree(folder / "adapter", tmp / "adapter")
    tensors = {"weight": weight.contiguous(), "bias": bias.reshape(1).contiguous()}
    tensors.update({k: v.contiguous() for k, v in (extra or {}).items()})
    save_file(tensors, str(tmp / "head.safetensors"))
    (tmp / "reward.json").write_text(json.dumps(asdict(spec), indent=2))
    mask = os.umask(0)
    os.umask(mask)
    for f in tmp.iterdir():  # safetensors writes 0600; the files follow the umask like every other output
        if f.is_file():
            f.chmod(0o666 & ~mask)
    replace_dir(tmp, folder)


def cached_features(
    model,
    tokenizer,
    rows,
    cache: Path | None,
    key: str,
    batch_size: int,
    progress: Progress,
    shard: int = 256,
):
    """Features of rows, each looked up in a cache kept per model (`key`) and keyed by the row's token ids:
    rows seen before, in any set and any order, cost nothing, and the rest are computed in shards of `shard`
    rows, each saved as it completes, so a killed extraction resumes where it stopped."""
    import torch
    from safetensors.torch import load_file, save_file

    if cache is None:
        return extract(model, tokenizer, rows, batch_size, progress)
    folder = Path(cache) / hashlib.sha256(key.encode()).hexdigest()[:16]
    known: dict[int, object] = {}
    for f in sorted(folder.glob("shard-*.safetensors")) if folder.is_dir() else ():
        try:
            got = load_file(str(f))
        except Exception:  # a damaged shard (a kill mid-write leaves only temp names): computed again
            continue
        known.update(zip(got["keys"].tolist(), got["features"], strict=True))
    keys = [row_key(ids, start) for ids, start in rows]
    missing = list({k: i for i, k in reversed(list(enumerate(keys))) if k not in known}.values())
    missing.sort(key=lambda i: len(rows[i][0]))
    if missing:
        progress.stage("reward features", len(missing))
        folder.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(missing), shard):
        idx = missing[s : s + shard]
        f = extract(model, tokenizer, [rows[i] for i in idx], batch_size)
        kt = torch.tensor([keys[i] for i in idx], dtype=torch.long)
        path = folder / f"shard-{hashlib.sha256(kt.numpy().tobytes()).hexdigest()[:16]}.safetensors"
        tmp = temp_name(path)
        save_file({"keys": kt, "features": f.contiguous()}, str(tmp))
        tmp.replace(path)
        known.update(zip(kt.tolist(), f, strict=True))
        progress.advance(len(idx))
    return torch.stack([known[k] for k in keys]) if keys else torch.zeros(0)


def row_key(ids: list[int], start: int) -> int:
    """A row's cache key: the first 8 bytes of the SHA-256 of its token ids and response start, as an int64."""
    digest = hashlib.sha256(json.dumps([ids, start]).encode()).digest()[:8]
    return int.from_bytes(digest, "little", signed=True)


def pair_rows(tokenizer, pairs: list[dict], max_length: int, conditioned: bool):
    """Encoded (chosen rows, rejected rows) of preference pairs ({"prompt", "chosen", "rejected"[, "principle_text"]})."""
    chosen, rejected = [], []
    for p in pairs:
        principle = p.get("principle_text") if conditioned else None
        chosen.append(encode(tokenizer, p["prompt"], p["chosen"], max_length, principle))
        rejected.append(encode(tokenizer, p["prompt"], p["rejected"], max_length, principle))
    return chosen, rejected


def accuracy_report(pairs: list[dict], r_chosen: list[float], r_rejected: list[float]) -> dict:
    """Agreement with the labels (ties count half), its Wilson interval, the split by whether the chosen
    response is the shorter or the longer one, and the correlation of reward with length (a reward model that
    learned "shorter wins" shows as such)."""
    from rlaif.judge_eval import wilson

    def share(rows):
        n = len(rows)
        wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in rows)
        lo, hi = wilson(round(wins), n)
        return {"pairs": n, "accuracy": wins / n if n else None, "ci95": (lo, hi)}

    rows = list(zip(r_chosen, r_rejected, strict=True))
    shorter = [row for p, row in zip(pairs, rows, strict=True) if len(p["chosen"]) < len(p["rejected"])]
    longer = [row for p, row in zip(pairs, rows, strict=True) if len(p["chosen"]) > len(p["rejected"])]
    lengths = [len(p["chosen"]) for p in pairs] + [len(p["rejected"]) for p in pairs]
    rewards = list(r_chosen) + list(r_rejected)
    return {
        **share(rows),
        "chosen_shorter": share(shorter),
        "chosen_longer": share(longer),
        "reward_length_correlation": pearson(rewards, lengths),
    }


def pearson(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


# -- training -------------------------------------------------------------------------------------------

PENALTIES = [1e-3, 1e-2, 1e-1, 1.0, 3.0, 10.0, 30.0, 100.0]
"""L2 penalties tried by cross-validation on the training pairs for a frozen-body head."""


def informative(pairs: list[dict]) -> tuple[list[dict], int]:
    """The pairs that state a preference, and how many did not: a pair whose chosen and rejected are the same
    text (public sets such as HH-RLHF hold some) has no preferred side, and trained on it a head learns nothing
    but noise. None left is an error."""
    kept = [p for p in pairs if p["chosen"] != p["rejected"]]
    if pairs and not kept:
        raise DataError(
            f"all {len(pairs)} pairs have the same text as chosen and rejected: they state no preference"
        )
    return kept, len(pairs) - len(kept)


def train_frozen(
    pairs: list[dict],
    base: str,
    out: str | Path,
    pool,
    sources: list[str] = (),
    principle_conditioned: bool = False,
    max_length: int = 512,
    margin: float = 0.0,
    centring: float = 0.0,
    penalties: list[float] = PENALTIES,
    batch_size: int = 8,
    seed: int = 0,
    progress: Progress = SILENT,
) -> RewardSpec:
    """Fit a Bradley-Terry head on the frozen body's features of `pairs`; the L2 penalty is chosen by 5-fold
    cross-validation on the pairs themselves. Features are cached under $RLAIF_CACHE/features, keyed by the
    model and the token ids (a rerun, or another penalty grid, costs nothing); writes `out` (head.safetensors, reward.json)."""
    import time

    import torch

    from rlaif.models import resolve_model

    t0 = time.perf_counter()
    pairs, identical = informative(pairs)
    path = resolve_model(base)
    model, tok = pool.model(path)
    rows_c, rows_r = pair_rows(tok, pairs, max_length, principle_conditioned)
    from rlaif.models import cache_dir

    cache = cache_dir() / "features"
    f = cached_features(model, tok, rows_c + rows_r, cache, path, batch_size, progress)
    fc, fr = f[: len(pairs)], f[len(pairs) :]
    progress.stage("fit head", len(penalties) + 1)
    cv = (
        cross_validate(fc, fr, penalties, seed=seed, margin=margin, centring=centring)
        if len(pairs) >= 10
        else {}
    )
    l2 = max(cv, key=lambda k: (cv[k], k)) if cv else penalties[-1]
    progress.advance(len(penalties))
    w, b = fit_head(fc, fr, l2, margin, centring)
    progress.advance(1)
    train_acc = float(((fc @ w) > (fr @ w)).float().mean()) if len(pairs) else None
    spec = RewardSpec(
        base=base,
        mode="frozen",
        principle_conditioned=principle_conditioned,
        max_length=max_length,
        trained_on=list(sources),
        figures={
            "pairs": len(pairs),
            "identical_dropped": identical,
            "l2": l2,
            "cv_accuracy": {str(k): v for k, v in cv.items()},
            "train_accuracy": train_acc,
            "margin": margin,
            "centring": centring,
            "seconds": time.perf_counter() - t0,
            "torch": torch.__version__,
        },
    )
    save_head(Path(out), w, b, spec)
    return spec


# -- a reward model as a judge --------------------------------------------------------------------------


def item_conversation(item: dict):
    """The conversation a judge item is about: its raw prompt (a user message or chat messages) when the item
    carries one, else the "User: ..." text the prompted judge reads, as one user message."""
    if "messages" in item:
        return item["messages"]
    return item["conversation"].removeprefix("User: ")


class RewardJudge:
    """A reward model in the judge's place (`judge.mode = "reward"`): each response is scored alone, and
    P(x better) = sigmoid(r_x - r_y), the Bradley-Terry probability the model was trained on. With an ensemble
    of principles, the rewards under each are averaged (only a principle-conditioned model reads them)."""

    mode = "reward"

    def __init__(self, model: RewardModel, config, name: str = ""):
        self.rm, self.config = model, config
        self.name = name or str(model.folder)
        """How verdicts name this model (`judged_by`): the name it was given by (a shipped head's, a path)."""
        self.truncated = 0
        self.scorer = None

    def _text(self, principle) -> str | None:
        return principle.question if self.rm.spec.principle_conditioned and principle is not None else None

    def scores(self, items: list[tuple], progress: Progress = SILENT) -> list[float]:
        """The reward of each (conversation, response, principle): the same interface as the prompted judge's
        pointwise log-odds."""
        return self.rm.rewards(
            [(c.removeprefix("User: ") if isinstance(c, str) else c, r, self._text(p)) for c, r, p in items],
            progress,
        )

    def score(self, conversation, response: str, principle=None) -> float:
        return self.scores([(conversation, response, principle)])[0]

    def judge(self, items: list[dict], progress: Progress = SILENT):
        from rlaif.judge.verdicts import decide_pointwise, sigmoid

        members = [tuple(it.get("principles") or (it.get("principle"),)) for it in items]
        rows = []
        for it, ps in zip(items, members, strict=True):
            conv = item_conversation(it)
            for p in ps:
                rows += [(conv, it["x"], self._text(p)), (conv, it["y"], self._text(p))]
        # identical inputs (one principle's text for an unconditioned model) are scored once
        unique = list(dict.fromkeys(json.dumps(r, sort_keys=True) for r in rows))
        table = dict(
            zip(unique, self.rm.rewards([tuple(json.loads(u)) for u in unique], progress), strict=True)
        )
        rewards = iter(table[json.dumps(r, sort_keys=True)] for r in rows)
        out = []
        for ps in members:
            rx, ry = [], []
            for _ in ps:
                rx.append(next(rewards))
                ry.append(next(rewards))
            pid = "+".join(p.id for p in ps if p is not None) or "reward"
            v = decide_pointwise(
                pid, sigmoid(sum(rx) / len(rx)), sigmoid(sum(ry) / len(ry)), self.config.min_confidence
            )
            out.append(dataclasses.replace(v, mode="reward", judged_by=self.name))
        return out


def attach_head(model) -> None:
    """A zero linear head on the model's features, as `model.reward_head` (every reward 0 at the start)."""
    import torch

    model.reward_head = torch.nn.Linear(2 * model.config.hidden_size, 1).to(next(model.parameters()).device)
    with torch.no_grad():
        model.reward_head.weight.zero_()
        model.reward_head.bias.zero_()


class RewardTask:
    """A LoRA reward model as a trainer task: LoRA on the body and a linear head (zero at the start, so every
    reward is 0 and the first loss is ln 2) trained together on the Bradley-Terry loss of each pair."""

    count_key = "pairs"
    stat_keys = ("acc", "margin")
    diverge_keys = "--learning-rate (lower) or the margin"
    modules_to_save = ["reward_head"]

    def __init__(
        self,
        tokenizer,
        max_length: int,
        conditioned: bool = False,
        margin: float = 0.0,
        centring: float = 0.0,
    ):
        self.tokenizer, self.max_length, self.conditioned = tokenizer, max_length, conditioned
        self.margin, self.centring = margin, centring

    def encode(self, p: dict):
        principle = p.get("principle_text") if self.conditioned else None
        return (
            encode(self.tokenizer, p["prompt"], p["chosen"], self.max_length, principle),
            encode(self.tokenizer, p["prompt"], p["rejected"], self.max_length, principle),
        )

    def rows(self, e) -> list[int]:
        return [len(e[0][0]), len(e[1][0])]

    def attach(self, model) -> None:
        attach_head(model)

    def setup(self, model) -> None:
        pass

    def prepare(self, model, data, progress) -> None:
        pass

    def loss(self, model, data, idx):
        from rlaif.losses import bradley_terry_loss

        base = model.get_base_model()
        batch = [data[i] for i in idx]
        f = features(base, [c for c, _ in batch] + [r for _, r in batch], self.tokenizer.pad_token_id)
        r = base.reward_head(f.to(base.reward_head.weight.dtype)).squeeze(-1).float()
        rc, rr = r[: len(batch)], r[len(batch) :]
        loss = bradley_terry_loss(rc, rr, self.margin, self.centring)
        return loss, {"acc": (rc > rr).float().sum().item(), "margin": (rc - rr).detach().sum().item()}

    def after_step(self, model, step: int) -> None:
        pass

    def finish(self, model) -> None:
        pass

    def summary(self, log: list[dict], epochs: int) -> dict:
        last = [x for x in log if x["epoch"] == epochs - 1]
        seen = sum(x["pairs"] for x in last)
        return {"train_accuracy": sum(x["acc"] * x["pairs"] for x in last) / seen}


def train_lora(
    pairs: list[dict],
    base: str,
    out: str | Path,
    pool,
    config,
    sources: list[str] = (),
    principle_conditioned: bool = False,
    max_length: int = 512,
    margin: float = 0.0,
    centring: float = 0.0,
    seed: int = 0,
    progress: Progress = SILENT,
) -> RewardSpec:
    """LoRA on the body and the head, on the shared trainer loop (checkpoints and resume under `out`/.train);
    writes `out` (adapter/, head.safetensors, reward.json)."""
    import shutil
    import time

    from rlaif.models import resolve_model
    from rlaif.trainer import train

    t0 = time.perf_counter()
    pairs, identical = informative(pairs)
    path = resolve_model(base)
    model, tok = pool.take(path)
    work = Path(out).with_name(Path(out).name + ".train")
    task = RewardTask(tok, max_length, principle_conditioned, margin, centring)
    trained, metrics, _ = train(model, task, pairs, config, seed, work, progress)
    head = trained.get_base_model().reward_head
    if hasattr(head, "modules_to_save"):  # peft's wrapper: its trained copy
        head = head.modules_to_save["default"]
    spec = RewardSpec(
        base=base,
        mode="lora",
        principle_conditioned=principle_conditioned,
        max_length=max_length,
        trained_on=list(sources),
        figures={**metrics, "identical_dropped": identical, "seconds": time.perf_counter() - t0},
    )
    Path(out).mkdir(parents=True, exist_ok=True)
    clear(Path(out) / "adapter")
    shutil.copytree(work / "adapter", Path(out) / "adapter")
    save_head(
        Path(out), head.weight.detach().float().reshape(-1).cpu(), head.bias.detach().float().cpu(), spec
    )
    return spec
