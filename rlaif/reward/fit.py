"""Fitting a linear head on fixed features: Bradley-Terry with an L2 penalty by L-BFGS, the penalty chosen by
cross-validation over pairs; `train_frozen` is the whole frozen-body recipe; accuracy with its interval."""

from __future__ import annotations

import math
import time
from pathlib import Path

from rlaif.data import DataError
from rlaif.judge_eval import wilson
from rlaif.models import cache_dir, resolve_model
from rlaif.privacy import clip_units, gaussian_noise, plan, poisson_plan, record, units_of
from rlaif.progress import SILENT, Progress
from rlaif.reward.features import cached_features, pair_rows
from rlaif.reward.format import RewardSpec, save_head


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


def fit_head_dp(
    fc,
    fr,
    units: list[str],
    private: dict,
    margin: float = 0.0,
    centring: float = 0.0,
    seed: int = 0,
    batch: int = 64,
    epochs: int = 20,
    lr: float = 1e-2,
    noise: float | None = None,
):
    """The head fitted by DP-SGD (rlaif/privacy.py) instead of L-BFGS: Poisson lots of units, each unit's gradient
    of the Bradley-Terry loss (closed form for a linear head: the loss's slope in each score times the features)
    clipped to C, Gaussian noise sigma C, Adam. Nothing is computed from all the data at once: no standardisation
    of the features and no cross-validated penalty (each would read every example). Returns (w, b, plan)."""
    import torch

    from rlaif.losses import bradley_terry_loss

    cfg, ledger = private["privacy"], private.get("ledger")
    p = plan(cfg, len(set(units)), batch, epochs, ledger, noise=noise, examples=len(units))
    steps = poisson_plan(units, p, seed)
    d = fc.shape[1]
    w = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    gen = torch.Generator().manual_seed(seed * 7919 + 29)
    fc, fr = fc.double(), fr.double()
    for _, lot in steps:
        opt.zero_grad()
        if lot:
            idx = torch.tensor(lot)
            s = (fc[idx] @ w + b).detach().requires_grad_(True)
            t = (fr[idx] @ w + b).detach().requires_grad_(True)
            bradley_terry_loss(s, t, margin, centring).sum().backward()
            per_w = s.grad[:, None] * fc[idx] + t.grad[:, None] * fr[idx]  # each pair's gradient in w
            per_b = (s.grad + t.grad)[:, None]
            slot = {u: k for k, u in enumerate(dict.fromkeys(units[i] for i in lot))}
            rows = torch.tensor([slot[units[i]] for i in lot])
            sums = {
                0: torch.zeros(len(slot), d, dtype=torch.float64).index_add_(0, rows, per_w),
                1: torch.zeros(len(slot), 1, dtype=torch.float64).index_add_(0, rows, per_b),
            }
            clipped, _ = clip_units(sums, p.clip)
            gw, gb = clipped[0], clipped[1]
        else:
            gw, gb = torch.zeros(d, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        w.grad = (gw + gaussian_noise((d,), p.noise * p.clip, gen).double()) / p.lot
        b.grad = (gb + gaussian_noise((1,), p.noise * p.clip, gen).double()) / p.lot
        opt.step()
    return w.detach().float(), b.detach().float(), p


def lbfgs_linear(dim: int, objective, iters: int = 200):
    """(w, b) of a linear score minimising `objective(w, b)` by full-batch L-BFGS from zero (deterministic);
    the heads of rlaif/reward/ and rlaif/applicability.py fit this way on standardised features."""
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


def accuracy_report(pairs: list[dict], r_chosen: list[float], r_rejected: list[float]) -> dict:
    """Agreement with the labels (ties count half), its Wilson interval, the split by whether the chosen
    response is the shorter or the longer one, and the correlation of reward with length (a reward model that
    learned "shorter wins" shows as such)."""

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
    private: dict | None = None,
) -> RewardSpec:
    """Fit a Bradley-Terry head on the frozen body's features of `pairs`; the L2 penalty is chosen by 5-fold
    cross-validation on the pairs themselves. Features are cached under $RLAIF_CACHE/features, keyed by the
    model and the token ids (a rerun, or another penalty grid, costs nothing); writes `out` (head.safetensors, reward.json)."""

    import torch

    t0 = time.perf_counter()
    pairs, identical = informative(pairs)
    path = resolve_model(base)
    model, tok = pool.model(path)
    rows_c, rows_r = pair_rows(tok, pairs, max_length, principle_conditioned)

    cache = cache_dir() / "features"
    f = cached_features(model, tok, rows_c + rows_r, cache, path, batch_size, progress)
    fc, fr = f[: len(pairs)], f[len(pairs) :]
    dp_figures = {}
    if private:  # differential privacy: DP-SGD on the head, no cross-validation (rlaif/privacy.py)
        units = units_of(pairs, private["privacy"])
        w, b, p = fit_head_dp(fc, fr, units, private, margin, centring, seed)
        dp_figures = {"privacy": record(private.get("ledger"), p)}
        l2, cv = 0.0, {}
    else:
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
            **dp_figures,
        },
    )
    save_head(Path(out), w, b, spec)
    return spec


# -- a reward model as a judge --------------------------------------------------------------------------
