"""Which principles apply to which prompt. Drawn blindly, a harmlessness principle judges a benign request
(and its reward model prefers the refusal) and a helpfulness principle judges a harmful one (and prefers the
compliance): rounds then buy safety with over-refusal. A prompt classifier, a logistic head on the same frozen
features as the reward heads (rlaif/reward/), says how likely a prompt is a harmful request; with
`judge.applicability = "classifier"` harmlessness principles judge the prompts it flags and helpfulness
principles the rest (Llama 2's safety gate in spirit, arXiv:2307.09288: the safety reward where the prompt is
harmful, the helpfulness reward otherwise).

rlaif ships `smollm2-135m-harmful-prompt`, trained with the project's own command on the first human turns of
hh-harmless-train.jsonl (red-team conversations) against the instructions of helpful-pairs-train.jsonl:

    rlaif prompt-classifier train --harmful ../shared/data/hh-harmless-train.jsonl \\
        --benign ../shared/data/helpful-pairs-train.jsonl --out rlaif/heads/smollm2-135m-harmful-prompt
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlaif.data import DataError, fresh_dir, read_jsonl_lines, replace_dir
from rlaif.models import resolve_model
from rlaif.progress import SILENT, Progress
from rlaif.reward.features import extract
from rlaif.reward.fit import lbfgs_linear

HEADS_DIR = Path(__file__).resolve().parent / "heads"
SPEC = "classifier.json"


@dataclass
class ClassifierSpec:
    base: str
    """The body: a model path, hub id, or the embedded model's name."""
    max_length: int = 256
    """Prompt tokens (chat-templated); a longer prompt loses its start."""
    threshold: float = 0.5
    """P(harmful) at or above which a prompt counts as a harmful request."""
    trained_on: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    schema: int = 1


def prompts_of(path: str | Path) -> list[str]:
    """The user requests of a JSON Lines file: `{"prompt": str}` records, or preference / chat records whose
    prompt is messages (the first user turn is taken). Errors name the file and line."""
    out = []
    for lineno, r in read_jsonl_lines(path):
        p = r.get("prompt")
        if isinstance(p, list):
            p = next((m.get("content") for m in p if isinstance(m, dict) and m.get("role") == "user"), None)
        if not isinstance(p, str) or not p.strip():
            raise DataError(f'{path}:{lineno}: "prompt" must be a string or messages with a user turn')
        out.append(p)
    if not out:
        raise DataError(f"{path}: no prompts")
    return out


def prompt_rows(tokenizer, prompts: list[str], max_length: int) -> list[tuple[list[int], int]]:
    """Each prompt chat-templated up to the assistant's turn, as (token ids, 0): the features read the hidden
    state where the model is about to answer, and the mean over the whole request."""
    rows = []
    for p in prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False).input_ids[-max_length:]
        rows.append((ids, 0))
    return rows


def fit_logistic(f, y, l2: float, iters: int = 200):
    """(w, b) minimising the mean logistic loss of labels `y` (1 = harmful) on features `f`, plus l2 * |w|^2, by
    full-batch L-BFGS on standardised features, folded back so the head reads raw features (deterministic)."""
    from rlaif.losses import logistic_loss

    mu, sd = f.double().mean(0), f.double().std(0).clamp(min=1e-6)
    z = (f.double() - mu) / sd
    w, b = lbfgs_linear(
        f.shape[1], lambda w, b: logistic_loss(z @ w + b, y.double()).mean() + l2 * (w * w).sum(), iters
    )
    return (w / sd).float(), (b - (mu / sd) @ w).float()


def accuracy(p: list[float], y: list[int], threshold: float = 0.5) -> float:
    """Share of prompts on the right side of the threshold (pure)."""
    return sum((pi >= threshold) == bool(yi) for pi, yi in zip(p, y, strict=True)) / len(y) if y else 0.0


def train_classifier(
    harmful: list[str],
    benign: list[str],
    base: str,
    out: str | Path,
    pool,
    sources: list[str] = (),
    max_length: int = 256,
    penalties: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0),
    seed: int = 0,
    progress: Progress = SILENT,
) -> ClassifierSpec:
    """Fit the head on the frozen body's features of the prompts, the L2 penalty chosen by 5-fold
    cross-validation on the training prompts themselves; writes `out` (head.safetensors, classifier.json)."""
    import torch

    t0 = time.perf_counter()
    path = resolve_model(base)
    model, tok = pool.model(path)
    prompts = harmful + benign
    f = extract(model, tok, prompt_rows(tok, prompts, max_length), 8, progress)
    y = torch.tensor([1] * len(harmful) + [0] * len(benign))
    progress.stage("fit classifier", len(penalties) + 1)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    folds = [perm[i::5] for i in range(5)]
    cv = {}
    for l2 in penalties:
        correct = 0
        for k in range(5):
            train = torch.cat([folds[j] for j in range(5) if j != k])
            w, b = fit_logistic(f[train], y[train], l2)
            correct += int((((f[folds[k]] @ w + b) >= 0).long() == y[folds[k]]).sum())
        cv[l2] = correct / len(y)
        progress.advance(1)
    l2 = max(cv, key=lambda k: (cv[k], k))
    w, b = fit_logistic(f, y, l2)
    progress.advance(1)
    spec = ClassifierSpec(
        base=base,
        max_length=max_length,
        trained_on=list(sources),
        figures={
            "harmful": len(harmful),
            "benign": len(benign),
            "l2": l2,
            "cv_accuracy": {str(k): v for k, v in cv.items()},
            "train_accuracy": float((((f @ w + b) >= 0).long() == y).float().mean()),
            "seconds": time.perf_counter() - t0,
            "torch": torch.__version__,
        },
    )
    save_classifier(Path(out), w, b, spec)
    return spec


def save_classifier(folder: Path, weight, bias, spec: ClassifierSpec) -> None:
    from safetensors.torch import save_file

    tmp = fresh_dir(folder.with_name(folder.name + ".tmp"))
    save_file(
        {"weight": weight.contiguous(), "bias": bias.reshape(1).contiguous()}, str(tmp / "head.safetensors")
    )
    (tmp / SPEC).write_text(json.dumps(asdict(spec), indent=2))
    for f in tmp.iterdir():
        f.chmod(0o644)
    replace_dir(tmp, folder)


def resolve_classifier(name: str) -> Path:
    """A classifier folder, or the name of a shipped one."""
    path = Path(name).expanduser()
    if (path / SPEC).is_file():
        return path
    if "/" not in name and name not in (".", "..") and (HEADS_DIR / name / SPEC).is_file():
        return HEADS_DIR / name
    shipped = sorted(p.parent.name for p in HEADS_DIR.glob(f"*/{SPEC}"))
    raise DataError(
        f"{name}: not a prompt classifier (no {SPEC}); give a folder written by `rlaif prompt-classifier "
        f"train` or a shipped one: {', '.join(shipped) or 'none'}"
    )


class PromptClassifier:
    """P(harmful request) of prompts, with the body borrowed from a ModelPool (shared with the reward heads)."""

    def __init__(self, name: str, pool, batch_size: int = 8):
        from safetensors.torch import load_file

        self.name = name
        self.folder = resolve_classifier(name)
        try:
            self.spec = ClassifierSpec(**json.loads((self.folder / SPEC).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise DataError(f"{self.folder / SPEC}: damaged ({e})") from None
        self.base = resolve_model(self.spec.base)
        head = load_file(str(self.folder / "head.safetensors"))
        self.weight, self.bias = head["weight"], head["bias"]
        self.pool, self.batch_size = pool, batch_size

    def p_harmful(self, prompts: list[str], progress: Progress = SILENT) -> list[float]:
        import torch

        if not prompts:
            return []
        model, tok = self.pool.model(self.base)
        f = extract(model, tok, prompt_rows(tok, prompts, self.spec.max_length), self.batch_size, progress)
        return torch.sigmoid(f @ self.weight + self.bias).tolist()

    def harmful(self, prompts: list[str], progress: Progress = SILENT) -> list[bool]:
        return [p >= self.spec.threshold for p in self.p_harmful(prompts, progress)]
