"""A principle-conditioned ("instructable") reward model on a frozen body: one model that scores a response
under any principle by reading the principle's text (SALMON's instructable reward model, arXiv:2310.05910, on
a small scale), trained on several preference sets at once, each labelled under principles of its own kind.

    r(p, x, y) = phi(x, y) . (w_0 + sum_j z_j(p) w_j) + b

phi(x, y) are the response features the frozen heads read (rlaif/reward/features.py: the final hidden state at the
response's last token and the mean over its tokens). z(p) is the principle's question read by the same body
(the same two features of its text), centred and projected on the principal directions of the training
principles' features (one scale for all, so similar texts get similar z). So the principle's text chooses a mixture of
k + 1 linear heads: a new principle file is scored by where its question lands among the principles the model
was trained under, with no code change and no retraining.

Why the text is not put in front of the conversation (SALMON's own way; `rlaif rm train --mode lora
--principle-conditioned` does that, training the body): with a frozen body a prefix changes every feature, so
each (principle, pair) would need its own forward pass over the long response (the 1600 AlpacaEval pairs alone
take about 25 minutes per principle on 2 cores), and a linear head on prefix-shifted features has no way to
turn a preference around. Here a pair's features are computed once and shared with the per-kind heads.

Whether it reads the principle is measured, not assumed: `rlaif rm eval --kind K` judges every pair under a
principle of kind K, so a set's accuracy under a matching principle against one of the other kind shows the
gap (a model that ignores the principle has none).

    rlaif rm train --mode conditioned --pairs ../shared/data/hh-harmless-train.jsonl \\
        ../shared/data/helpful-pairs-train.jsonl --kinds harmlessness helpfulness --out rm-cond/
    rlaif rm eval --model rm-cond/ --data ../shared/data/helpful-pairs-dev.jsonl --kind helpfulness
"""

from __future__ import annotations

import time
from pathlib import Path

from rlaif.data import DataError
from rlaif.models import cache_dir, resolve_model
from rlaif.progress import SILENT, Progress
from rlaif.reward.features import cached_features, extract, pair_rows
from rlaif.reward.fit import PENALTIES, informative, lbfgs_linear
from rlaif.reward.format import RewardSpec, save_head

COMPONENTS = 16
"""Principal directions of the training principles' features the model reads (k; at most their number - 1,
so a constitution of up to 17 principles is read in full)."""


def principle_rows(tokenizer, texts: list[str]) -> list[tuple[list[int], int]]:
    """A principle's text as one row of token ids whose features are read over all of it."""
    return [(tokenizer(t, add_special_tokens=False).input_ids or [tokenizer.eos_token_id], 0) for t in texts]


def principle_basis(psi, k: int = COMPONENTS):
    """(mean, basis): the training principles' features `psi` (n, D) centred, and their first k principal
    directions as rows of `basis` (k, D), all divided by one scale, the principles' total spread, so that
    z = (psi - mean) @ basis.T keeps the distances between principles (similar texts, similar z) with a
    mean squared norm of 1 over the training principles. k is at most n - 1."""
    import torch

    psi = psi.double()
    mean = psi.mean(0)
    centred = psi - mean
    k = max(0, min(k, len(psi) - 1))
    if k == 0:
        return mean.float(), torch.zeros(0, psi.shape[1])
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    spread = float((s[:k] ** 2).sum() / len(psi)) ** 0.5 or 1.0
    # a fixed sign per direction (its largest entry positive), so refits give the same basis
    signs = torch.sign(vh[:k].gather(1, vh[:k].abs().argmax(1, keepdim=True))).clamp(min=0) * 2 - 1
    return mean.float(), (vh[:k] * signs / spread).float()


def conditioned_scores(f, z, weight, bias):
    """r = f . (w_0 + sum_j z_j w_j) + b per row: features f (n, D), principle coordinates z (n, k), weight
    (k + 1, D) whose first row is w_0 (pure)."""
    import torch

    gates = torch.cat([torch.ones(len(f), 1, dtype=f.dtype), z.to(f.dtype)], dim=1)
    return ((f @ weight.to(f.dtype).T) * gates).sum(-1) + bias.to(f.dtype)


def fit_conditioned(fc, fr, z, l2: float, centring: float = 0.0, iters: int = 200):
    """(weight (k+1, D), bias) minimising the mean Bradley-Terry loss of rows (chosen features `fc`, rejected
    `fr`, principle coordinates `z`) plus l2 * |weight|^2, by full-batch L-BFGS on standardised features, folded
    back so the model reads raw features (deterministic)."""
    import torch

    from rlaif.losses import bradley_terry_loss

    both = torch.cat([fc, fr]).double()
    mu, sd = both.mean(0), both.std(0).clamp(min=1e-6)
    zc, zr = (fc.double() - mu) / sd, (fr.double() - mu) / sd
    k1, d = z.shape[1] + 1, fc.shape[1]
    zz = z.double()

    def objective(w, b):
        W = w.view(k1, d)
        return (
            bradley_terry_loss(
                conditioned_scores(zc, zz, W, b), conditioned_scores(zr, zz, W, b), 0.0, centring
            ).mean()
            + l2 * (w * w).sum()
        )

    w, b = lbfgs_linear(k1 * d, objective, iters)
    W = w.view(k1, d) / sd
    # the bias folds in -mu/sd . w_j per head: for j >= 1 that term moves with z, so it stays per head
    shift = (mu / sd) @ w.view(k1, d).T  # (k+1,)
    return W.float(), (b - shift[0]).float(), (-shift[1:]).float()


def train_conditioned(
    sets: list[tuple[list[dict], str]],
    base: str,
    out: str | Path,
    pool,
    constitution,
    sources: list[str] = (),
    components: int = COMPONENTS,
    max_length: int = 512,
    centring: float = 0.0,
    penalties: list[float] | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: Progress = SILENT,
):
    """Fit the conditioned model on preference sets, each (pairs, principle kind): every pair of a set is a
    training row under each principle of its kind in `constitution` (a pair's own "principle", when it names
    one of the constitution's, instead). The L2 penalty is chosen by 5-fold cross-validation over pairs (all
    rows of a pair in one fold). Features are cached like the frozen heads' (the same cache entries)."""
    import torch

    t0 = time.perf_counter()
    path = resolve_model(base)
    model, tok = pool.model(path)
    weighted = [p for p, w in zip(constitution.principles, constitution.weights, strict=True) if w > 0]
    texts = list(dict.fromkeys(p.question for p in weighted))
    psi = extract(model, tok, principle_rows(tok, texts), batch_size)
    mean, basis = principle_basis(psi, components)
    coords = dict(zip(texts, ((psi - mean) @ basis.T), strict=True))
    fc_all, fr_all, z_all, group, counts = [], [], [], [], {}
    n_pairs = 0
    for pairs, kind in sets:
        under = [p for p in weighted if p.kind == kind]
        if not under:
            raise DataError(
                f"no principle of kind {kind!r} in the constitution (it has: "
                f"{', '.join(sorted({p.kind for p in weighted}))})"
            )
        pairs, _ = informative(pairs)
        rows_c, rows_r = pair_rows(tok, pairs, max_length, conditioned=False)
        f = cached_features(model, tok, rows_c + rows_r, cache_dir() / "features", path, batch_size, progress)
        fc, fr = f[: len(pairs)], f[len(pairs) :]
        by_id = {p.id: p for p in weighted}
        for i, pair in enumerate(pairs):
            own = by_id.get(pair.get("principle", ""))
            for p in [own] if own is not None else under:
                fc_all.append(fc[i])
                fr_all.append(fr[i])
                z_all.append(coords[p.question])
                group.append(n_pairs + i)
        n_pairs += len(pairs)
        counts[kind] = counts.get(kind, 0) + len(pairs)
    fc, fr, z = torch.stack(fc_all), torch.stack(fr_all), torch.stack(z_all)
    group_t = torch.tensor(group)
    penalties = penalties or PENALTIES
    progress.stage("fit conditioned head", len(penalties) + 1)
    perm = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed))
    fold_of = torch.empty(n_pairs, dtype=torch.long)
    fold_of[perm] = torch.arange(n_pairs) % 5
    row_fold = fold_of[group_t]
    cv = {}
    for l2 in penalties:
        correct = 0
        for k in range(5):
            held, train = row_fold == k, row_fold != k
            W, b, bz = fit_conditioned(fc[train], fr[train], z[train], l2, centring)
            margin = conditioned_scores(fc[held], z[held], W, b) - conditioned_scores(fr[held], z[held], W, b)
            correct += int((margin > 0).sum())
        cv[l2] = correct / len(fc)
        progress.advance(1)
    l2 = max(cv, key=lambda k: (cv[k], k))
    W, b, bz = fit_conditioned(fc, fr, z, l2, centring)
    progress.advance(1)
    train_acc = float((conditioned_scores(fc, z, W, b) > conditioned_scores(fr, z, W, b)).float().mean())
    spec = RewardSpec(
        base=base,
        mode="conditioned",
        principle_conditioned=True,
        max_length=max_length,
        trained_on=list(sources),
        figures={
            "pairs": n_pairs,
            "pairs_by_kind": counts,
            "rows": len(fc),
            "principles": {p.id: p.kind for p in weighted},
            "components": int(basis.shape[0]),
            "l2": l2,
            "cv_accuracy": {str(k): v for k, v in cv.items()},
            "train_accuracy": train_acc,
            "centring": centring,
            "seconds": time.perf_counter() - t0,
            "torch": torch.__version__,
        },
    )
    # standardising the features gave each head j >= 1 a constant term, which moves with z_j: kept per head
    save_head(Path(out), W, b, spec, {"principle_mean": mean, "principle_basis": basis, "head_bias": bz})
    return spec


class PrincipleReader:
    """The principle side of a conditioned reward model in use: z(p) of a principle text, computed by the body
    once per distinct text."""

    def __init__(self, head: dict, model, tokenizer, batch_size: int = 8):
        self.mean, self.basis, self.head_bias = (
            head["principle_mean"],
            head["principle_basis"],
            head["head_bias"],
        )
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self._z: dict[str, object] = {}

    def coords(self, texts: list[str]):
        import torch

        new = [t for t in dict.fromkeys(texts) if t not in self._z]
        if new:
            psi = extract(self.model, self.tokenizer, principle_rows(self.tokenizer, new), self.batch_size)
            for t, z in zip(new, (psi - self.mean) @ self.basis.T, strict=True):
                self._z[t] = z
        return torch.stack([self._z[t] for t in texts]) if texts else torch.zeros(0, len(self.basis))

    def rewards(self, f, texts: list[str | None], weight, bias) -> list[float]:
        if any(t is None for t in texts):
            raise DataError(
                "a principle-conditioned reward model scores a response under a principle, and none was given"
            )
        z = self.coords(texts)  # type: ignore[arg-type]
        return (conditioned_scores(f, z, weight, bias) + z @ self.head_bias).tolist()
