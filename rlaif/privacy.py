"""Differentially private training (DP-SGD, Abadi et al. 2016) in the one trainer loop, and the run's budget.

With `privacy.epsilon` > 0 every training stage (dpo and its family, sft, rl, the reward model's LoRA mode)
trains with DP-SGD with respect to a *unit*: a record, or a user (`privacy.unit = "user"`: all records with the
same `user` field; rl's unit is the prompt, whose samples share a baseline):

1. Lots by Poisson sampling: each step takes each unit with probability q = (batch x grad_accum) / units.
2. Per-unit gradients of the trainable parameters. The trainable layers are linear (LoRA's A and B, a value or
   reward head): a forward hook keeps each layer's input, a backward hook its output gradient, and the
   per-row gradient is their product summed over the sequence (einsum), the way Opacus computes linear layers'
   per-sample gradients; rows are summed into their example and examples into their unit. A test checks them
   against one backward pass per example.
3. Each unit's gradient (all parameters together) is scaled to norm at most C (`privacy.clip`), summed, and
   Gaussian noise of deviation sigma x C is added once (by rank 0 of a data-parallel group, before the sum over
   processes), then divided by the expected lot size q x units.
4. sigma is solved (Opacus's accountants: PRV by default, or RDP) so that `privacy.trainings` trainings of the
   planned size spend exactly `privacy.epsilon` at delta (default 1 / units).

The budget: each DP training appends (stage, round, sigma, q, steps, units, delta) to RUN/privacy.json. Before
one starts, the accountant composes what the ledger holds with what it plans; a training that would exceed the
budget is refused, naming what to change. Trainings of the same data compose in sequence (the accountant over
all their steps); with `privacy.disjoint` the stages learn from disjoint data (the paper's D1 / D2 / D3) and
compose in parallel (the largest stage's spend).

Anything computed across units breaks the guarantee, so on the DP path: KTO's reference point z0 is fixed at 0
(it is a mean over other examples), rl's reward whitening over the round is off (RLOO / GRPO advantages use a
prompt's own samples, which are one unit), and examples are never mixed into another unit's gradient.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from rlaif.config import load_config
from rlaif.config.privacy import PrivacyConfig
from rlaif.data import DataError, read_json_file, write_json


class BudgetExceeded(DataError):
    """A DP training would spend more than the run's privacy budget."""


# -- accounting -----------------------------------------------------------------------------------------------


def _accountant(kind: str, history: list[tuple[float, float, int]]):
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = PRVAccountant() if kind == "prv" else RDPAccountant()
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history if n > 0]
    return acc


def epsilon_of(history: list[tuple[float, float, int]], delta: float, kind: str = "prv") -> float:
    """epsilon after the DP steps in `history` ((noise multiplier, sample rate, steps) entries) at delta."""
    if not history:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # RDP's "optimal order is the largest alpha": a looser bound, not an error
        return float(_accountant(kind, history).get_epsilon(delta=delta))


def noise_for(epsilon: float, delta: float, sample_rate: float, steps: int, kind: str = "prv") -> float:
    """The noise multiplier sigma at which `steps` steps at `sample_rate` spend `epsilon` at `delta`."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=kind,
            )
        )


@dataclass
class Settings:
    """What the accountant needs of a DP training (and what the report shows)."""

    noise: float
    sample_rate: float
    steps: int
    units: int
    delta: float
    clip: float
    poisson: bool


@dataclass
class Entry(Settings):
    """A finished DP training in the run's ledger."""

    stage: str = ""
    round: int = 0


class Ledger:
    """RUN/privacy.json: every DP training of the run, in order."""

    def __init__(self, path: str | Path, stage: str, round_: int):
        self.path, self.stage, self.round = Path(path), stage, round_

    def entries(self) -> list[Entry]:
        doc = read_json_file(self.path) or {}
        return [Entry(**e) for e in doc.get("trainings", [])]

    def others(self) -> list[Entry]:
        """Earlier trainings, but a rerun of this stage and round (a resumed or repeated training) replaces its own."""
        return [e for e in self.entries() if (e.stage, e.round) != (self.stage, self.round)]

    def add(self, entry: Entry) -> None:
        write_json(self.path, {"trainings": [asdict(e) for e in [*self.others(), entry]]})


def spent(entries: list[Entry], delta: float, kind: str, disjoint: bool) -> float:
    """The run's epsilon at delta: every training composed in sequence, or, with disjoint stages, each stage's
    trainings in sequence and the stages in parallel (the maximum)."""
    if not disjoint:
        return epsilon_of([(e.noise, e.sample_rate, e.steps) for e in entries], delta, kind)
    stages = {e.stage for e in entries}
    return max(
        (
            epsilon_of([(e.noise, e.sample_rate, e.steps) for e in entries if e.stage == s], delta, kind)
            for s in stages
        ),
        default=0.0,
    )


@dataclass
class Plan(Settings):
    """A DP training's settings, fixed before it starts."""

    lot: float = 1.0
    """The expected lot size q x units: what the noisy sum is divided by."""


def plan(
    cfg: PrivacyConfig,
    units: int,
    per_step: int,
    epochs: int,
    ledger: Ledger | None,
    noise: float | None = None,
    examples: int | None = None,
) -> Plan:
    """Sample rate, steps and noise for a training of `units` units, checked against the budget (a training that
    would exceed it raises BudgetExceeded, naming what to change). `noise` overrides the solved multiplier (tests).

    `per_step` counts examples, as without DP: where a unit holds several of the `examples` (a user's records, a
    prompt's rollouts), q = per_step / examples, so a lot holds per_step examples on average and one epoch takes
    as many steps as the non-private training."""
    q = min(1.0, per_step / max(units, examples or 0))
    steps = max(1, math.ceil(epochs / q))
    delta = cfg.delta or 1.0 / units
    if noise is None:
        noise = noise_for(cfg.epsilon, delta, q, steps * cfg.trainings, cfg.accountant)
    p = Plan(noise, q, steps, units, delta, cfg.clip, cfg.poisson, lot=q * units)
    if ledger is not None:
        mine = Entry(
            noise, q, steps, units, delta, cfg.clip, cfg.poisson, stage=ledger.stage, round=ledger.round
        )
        after = spent([*ledger.others(), mine], delta, cfg.accountant, cfg.disjoint)
        if after > cfg.epsilon * (1 + 1e-6):
            before = spent(ledger.others(), delta, cfg.accountant, cfg.disjoint)
            raise BudgetExceeded(
                f"{ledger.path}: {ledger.stage} of round {ledger.round} would bring the run's privacy spend from "
                f"epsilon {before:.3g} to {after:.3g}, over privacy.epsilon = {cfg.epsilon:g} (delta {delta:.2g}). "
                "Raise privacy.epsilon, or plan for more trainings with privacy.trainings (more noise each), or "
                "train fewer rounds or epochs; the completed rounds are kept"
            )
    return p


def record(ledger: Ledger | None, p: Plan) -> dict:
    """Add the finished training to the ledger; returns its figures (with the run's spend after it)."""
    entry = Entry(
        p.noise,
        p.sample_rate,
        p.steps,
        p.units,
        p.delta,
        p.clip,
        p.poisson,
        stage=ledger.stage if ledger else "train",
        round=ledger.round if ledger else 0,
    )
    if ledger is not None:
        ledger.add(entry)
    return {
        "noise_multiplier": p.noise,
        "sample_rate": p.sample_rate,
        "dp_steps": p.steps,
        "units": p.units,
        "delta": p.delta,
        "clip": p.clip,
        "poisson": p.poisson,
        "epsilon_this_training": epsilon_of([(p.noise, p.sample_rate, p.steps)], p.delta),
    }


# -- lots -----------------------------------------------------------------------------------------------------


def units_of(examples: list[dict], cfg: PrivacyConfig, default_key=None) -> list[str]:
    """Each example's unit: its `user` (privacy.unit = "user"), else the task's key (rl: the prompt), else itself."""
    out = []
    for i, e in enumerate(examples):
        if cfg.unit == "user" and isinstance(e, dict) and e.get("user") is not None:
            out.append(f"user:{e['user']}")
        elif default_key is not None:
            out.append(f"key:{default_key(e)}")
        else:
            out.append(f"record:{i}")
    return out


def poisson_plan(units: list[str], p: Plan, seed: int) -> list[tuple[int, list[int]]]:
    """Every step as (epoch, example indices): each unit joins a step's lot with probability q (Poisson), or, without
    Poisson sampling, shuffled fixed lots of the planned size. A unit's examples go together."""
    members: dict[str, list[int]] = {}
    for i, u in enumerate(units):
        members.setdefault(u, []).append(i)
    names = list(members)
    rng = random.Random(f"{seed}:dp")
    steps = []
    if p.poisson:
        per_epoch = max(1, round(1 / p.sample_rate))
        for s in range(p.steps):
            lot = [i for u in names if rng.random() < p.sample_rate for i in members[u]]
            steps.append((s // per_epoch, lot))
        return steps
    size = max(1, round(p.sample_rate * len(names)))
    epoch = 0
    while len(steps) < p.steps:
        order = list(names)
        rng.shuffle(order)
        for s in range(0, len(order), size):
            if len(steps) < p.steps:
                steps.append((epoch, [i for u in order[s : s + size] for i in members[u]]))
        epoch += 1
    return steps


# -- per-sample gradients ------------------------------------------------------------------------------------


class PerSampleGrads:
    """Per-row gradients of every trainable linear layer (weight and bias), by hooks: the layer's input kept in
    the forward pass, its output gradient in the backward pass, their product summed over the sequence."""

    def __init__(self, model, params):
        import torch

        self.layers, self.handles, self.grads = [], [], {}
        wanted = {id(p) for p in params}
        covered = set()
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and any(id(p) in wanted for p in m.parameters(recurse=False)):
                self.layers.append(m)
                covered.update(id(p) for p in m.parameters(recurse=False) if p.requires_grad)
                self.handles.append(m.register_forward_hook(self._forward))
                self.handles.append(m.register_full_backward_hook(self._backward))
        missing = wanted - covered
        if missing:
            raise DataError(
                f"differential privacy: {len(missing)} trainable parameter(s) are not in linear layers; per-example "
                "gradients are computed for linear layers only (LoRA and heads)"
            )
        self.inputs: dict[int, list] = {}

    def _forward(self, module, args, output):
        import torch

        if torch.is_grad_enabled() and module.weight.requires_grad:
            self.inputs.setdefault(id(module), []).append(args[0].detach())

    def _backward(self, module, grad_input, grad_output):
        import torch

        stack = self.inputs.get(id(module))
        if not stack:
            return
        x, g = stack.pop(), grad_output[0].detach()
        if x.dim() == 2:
            x, g = x[:, None], g[:, None]
        x, g = x.reshape(x.shape[0], -1, x.shape[-1]), g.reshape(g.shape[0], -1, g.shape[-1])
        w = torch.einsum("bto,bti->boi", g.float(), x.float())
        self._add(module.weight, w)
        if module.bias is not None and module.bias.requires_grad:
            self._add(module.bias, g.float().sum(1))

    def _add(self, p, per_row):
        if id(p) in self.grads:
            self.grads[id(p)] = (p, self.grads[id(p)][1] + per_row)
        else:
            self.grads[id(p)] = (p, per_row)

    def take(self) -> dict:
        """{parameter id: (parameter, per-row gradients (rows, *shape))} of the last backward pass; cleared."""
        out, self.grads, self.inputs = self.grads, {}, {}
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def clip_units(sums: dict, clip: float):
    """Scale each unit's gradient (row u of every tensor in `sums`: {param id: (units, *shape)}), all parameters
    together, to norm at most `clip`, and sum over the units (pure). Returns ({param id: summed gradient}, the
    units' norms before clipping, (units,))."""
    import torch

    if not sums:
        return {}, torch.zeros(0)
    norms = sum((t.double() ** 2).flatten(1).sum(1) for t in sums.values()).sqrt()
    factor = (clip / (norms + 1e-12)).clamp(max=1.0) if math.isfinite(clip) else torch.ones_like(norms)
    out = {pid: (t * factor.to(t.dtype).view(-1, *[1] * (t.dim() - 1))).sum(0) for pid, t in sums.items()}
    return out, norms


def gaussian_noise(shape, std: float, generator):
    import torch

    return torch.normal(0.0, std, size=shape, generator=generator) if std > 0 else torch.zeros(shape)


def describe(p: Plan) -> str:
    return (
        f"DP-SGD: sigma {p.noise:.3g}, clip {p.clip:g}, q {p.sample_rate:.3g} ({p.lot:.1f} of {p.units} units per "
        f"lot), {p.steps} steps, delta {p.delta:.2g}"
        + ("" if p.poisson else " (fixed lots: the accounting assumes Poisson)")
    )


def check_round(run, k: int, stages: list[str]) -> None:
    """Before round k's first stage: refuse a round with DP training when the run has already done the trainings
    its budget was planned for (`privacy.trainings`), so no generation or judging is spent on a round that could
    not train. (Each training checks its exact spend again when it starts.)"""
    cfg = run.config.privacy
    if not cfg.active or not any(s in ("dpo", "sft", "rl", "reward_model") for s in stages):
        return
    done = [e for e in Ledger(run.dir / "privacy.json", "", k).entries() if e.round != k]
    if cfg.disjoint:
        done = [e for e in done if e.stage in stages]
    if len({(e.stage, e.round) for e in done}) >= cfg.trainings:
        eps = spent(done, done[-1].delta, cfg.accountant, cfg.disjoint)
        raise BudgetExceeded(
            f"{run.dir / 'privacy.json'}: round {k} is refused before it starts: the run has done the "
            f"{cfg.trainings} DP training(s) its budget (privacy.epsilon = {cfg.epsilon:g}) was planned for and spent "
            f"epsilon {eps:.3g}. Raise privacy.epsilon or privacy.trainings (more noise per training) for new rounds; "
            "the completed rounds are kept"
        )


def stage_privacy(round_, stage: str) -> dict:
    """What a training stage passes to the trainer: the privacy config and the run's ledger, or nothing."""
    cfg = round_.config.privacy
    if not cfg.active:
        return {}
    return {"privacy": cfg, "ledger": Ledger(round_.run.dir / "privacy.json", stage, round_.k)}


def ledger_summary(run_dir: str | Path) -> list[dict]:
    """The run's DP trainings with the run's spend after each (for the report, the manifest and eval rows),
    composed as the run's own [privacy] section says."""
    run_dir = Path(run_dir)
    doc = read_json_file(run_dir / "privacy.json") or {}
    entries = [Entry(**e) for e in doc.get("trainings", [])]
    if not entries:
        return []
    cfg = load_config(run_dir, []).privacy
    return [
        {**asdict(e), "epsilon_after": spent(entries[: i + 1], e.delta, cfg.accountant, cfg.disjoint)}
        for i, e in enumerate(entries)
    ]


def epsilon_through(run_dir: str | Path, k: int) -> float | None:
    """The run's spend once round k's trainings are done (None for a run without DP)."""
    rows = [r for r in ledger_summary(run_dir) if r["round"] <= k]
    if not (Path(run_dir) / "privacy.json").is_file():
        return None
    return rows[-1]["epsilon_after"] if rows else 0.0


def dumps(p: Plan) -> str:
    return json.dumps(asdict(p))
