"""Rounds without merges: each round's model kept as one LoRA adapter over the run's initial model.

Round k trains a LoRA adapter (B_k, A_k, scale s_k = alpha/r) on round k-1's model. When round k-1's model is
itself W0 + sum_{j<k} s_j B_j A_j, round k's model is W0 + sum_{j<=k} s_j B_j A_j, which is again one LoRA
adapter over W0: A = [A_1; ...; A_k] stacked along the rank, B = [s_1 B_1, ..., s_k B_k] side by side, scale 1
(rank r_1 + ... + r_k). `compose` writes that adapter exactly; vLLM serves it on W0 (`enable_lora`), so a round
costs an adapter's bytes instead of a full model's, and servers load it with `/v1/load_lora_adapter` instead of
reloading their weights. `rlaif merge` folds it into full weights when wanted (at the end, or on demand).

A composed folder holds the adapter (adapter_config.json with `base_model_name_or_path` = W0,
adapter_model.safetensors), the tokenizer and generation config of the model, and `rlaif-lora.json`.

    rlaif run runs/demo --rounds 3 --set merge.defer=true
    rlaif merge runs/demo --round 3
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rlaif.data import fresh_dir, portable, replace_dir

MARKER = "rlaif-lora.json"

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The LoRA ranks a vLLM engine can be sized for (its max_lora_rank choices)."""


def is_lora(path) -> bool:
    """True for a composed adapter folder written by `compose` (a round's model kept as an adapter)."""
    return (Path(path) / MARKER).is_file()


def base_of(path) -> str:
    """The base model of a composed adapter folder (stored relative to the folder when it is inside the run)."""
    cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    base = Path(cfg["base_model_name_or_path"])
    return str(base if base.is_absolute() else (Path(path) / base).resolve())


def rank_of(path) -> int:
    return int(json.loads((Path(path) / "adapter_config.json").read_text())["r"])


def vllm_rank(rank: int) -> int:
    """The smallest max_lora_rank a vLLM engine takes that holds `rank`."""
    for r in VLLM_RANKS:
        if r >= rank:
            return r
    raise ValueError(
        f"a composed adapter of rank {rank} is more than vLLM serves ({VLLM_RANKS[-1]}): merge it"
    )


def _factors(folder: Path) -> tuple[dict, dict, float]:
    """({module: A}, {module: B}, scale) of a peft adapter folder."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "adapter_config.json").read_text())
    if cfg.get("use_rslora") or cfg.get("use_dora"):
        raise ValueError(f"{folder}: rsLoRA / DoRA adapters cannot be composed")
    scale = cfg["lora_alpha"] / cfg["r"]
    weights = load_file(str(folder / "adapter_model.safetensors"))
    a = {k[: -len(".lora_A.weight")]: v for k, v in weights.items() if k.endswith(".lora_A.weight")}
    b = {k[: -len(".lora_B.weight")]: v for k, v in weights.items() if k.endswith(".lora_B.weight")}
    others = [k for k in weights if not k.endswith((".lora_A.weight", ".lora_B.weight"))]
    if others or a.keys() != b.keys():
        raise ValueError(f"{folder}: only plain LoRA A/B weights can be composed (found {others[:3]})")
    return a, b, scale


def compose_factors(parts: list[tuple[dict, dict, float]]) -> tuple[dict, dict]:
    """One adapter (scale 1) equal to the sum of the parts' deltas: A stacked along the rank, B scaled and
    placed side by side. A module missing from a part contributes nothing there."""
    import torch

    modules = sorted({m for a, _, _ in parts for m in a})
    out_a, out_b = {}, {}
    for m in modules:
        present = [(a[m], b[m], s) for a, b, s in parts if m in a]
        out_a[m] = torch.cat([a for a, _, _ in present], dim=0).contiguous()
        out_b[m] = torch.cat([s * b for _, b, s in present], dim=1).contiguous()
    return out_a, out_b


def compose(
    previous: str | Path | None,
    adapter: str | Path,
    model: str | Path,
    base: str,
    target: Path,
    scale: float = 1.0,
) -> Path:
    """Write `target`: the round's model as one adapter over `base` (the run's initial model): `previous` (the
    last round's composed folder, or None when the round started from `base`) plus the round's `adapter`, its
    delta times `scale` (merge.scale). `model` is the round's starting model (its tokenizer and generation config
    are copied). Atomic."""
    from safetensors.torch import save_file

    parts = []
    if previous is not None:
        parts.append(_factors(Path(previous)))
    a_new, b_new, s_new = _factors(Path(adapter))
    parts.append((a_new, b_new, s_new * scale))
    a, b = compose_factors(parts)
    rank = next(iter(a.values())).shape[0]
    tmp = fresh_dir(target.with_name(target.name + ".tmp"))
    weights = {f"{m}.lora_A.weight": t for m, t in a.items()}
    weights.update({f"{m}.lora_B.weight": t for m, t in b.items()})
    save_file(weights, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((Path(adapter) / "adapter_config.json").read_text())
    targets = sorted({m.rsplit(".", 1)[-1] for m in a})
    cfg.update(
        r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0, rank_pattern={}, alpha_pattern={}
    )
    # the base is stored relative to the folder when both are inside one run: a moved run still finds it
    rel = portable(base, target.parent.parent)
    cfg["base_model_name_or_path"] = str(Path("../..") / rel) if not Path(rel).is_absolute() else rel
    (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                 "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model"):  # fmt: skip
        if (Path(model) / name).is_file():
            shutil.copy(Path(model) / name, tmp / name)
    (tmp / MARKER).write_text(json.dumps({"rank": rank}))
    replace_dir(tmp, target)
    return target


# -- TR-DPO / TR-KTO: a moving reference adapter -----------------------------------------------------------


def lora_pairs(model):
    """(A_policy, B_policy, A_ref, B_ref) for every LoRA layer holding both adapters."""
    for module in model.modules():
        a, b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if a is not None and "default" in a and "ref" in a:
            yield a["default"].weight, b["default"].weight, a["ref"].weight, b["ref"].weight


def tr_dpo_update(model, alpha: float) -> None:
    """Reference adapter <- alpha * policy + (1 - alpha) * reference, on the weight deltas B @ A.

    The mix [alpha Bp | (1 - alpha) Br] @ [Ap ; Ar] has rank <= r + 2r; it is truncated to the reference's rank
    2r through QR + SVD of the small core (exact whenever the mix has rank <= 2r)."""
    import torch

    with torch.no_grad():
        for ap, bp, ar, br in lora_pairs(model):
            rank = ar.shape[0]
            left = torch.cat([alpha * bp.float(), (1 - alpha) * br.float()], dim=1)  # (out, 3r)
            right = torch.cat([ap.float(), ar.float()], dim=0)  # (3r, in)
            qu, ru = torch.linalg.qr(left)
            qv, rv = torch.linalg.qr(right.T)
            x, sv, yt = torch.linalg.svd(ru @ rv.T)
            root = sv[:rank].sqrt()
            br.copy_((qu @ x[:, :rank] * root).to(br.dtype))
            ar.copy_((root[:, None] * (yt[:rank] @ qv.T)).to(ar.dtype))


class MovingReference:
    """TR-DPO / TR-KTO for a trainer task (arXiv:2404.09656): with `config.tr_dpo_tau` > 0 the reference is a
    second adapter, "ref", of rank 2r with the same scale, zero at the start (= the base), and every tau optimizer
    steps ref <- alpha * policy + (1 - alpha) * ref (`tr_dpo_update`). A task mixes this in for its setup,
    after_step and finish; `moving_ref` says whether it is on."""

    config: object

    @property
    def moving_ref(self) -> bool:
        return self.config.tr_dpo_tau > 0

    def setup(self, model) -> None:
        from peft import LoraConfig

        if self.moving_ref:
            c = self.config
            ref_lora = LoraConfig(
                r=2 * c.lora_r,
                lora_alpha=2 * c.lora_alpha,
                lora_dropout=0.0,
                target_modules=list(c.lora_target),
                task_type="CAUSAL_LM",
            )
            model.add_adapter("ref", ref_lora)
            model.set_adapter("default")

    def after_step(self, model, step: int) -> None:
        if self.moving_ref and (step + 1) % self.config.tr_dpo_tau == 0:
            tr_dpo_update(model, self.config.tr_dpo_alpha)

    def finish(self, model) -> None:
        if self.moving_ref:
            model.delete_adapter("ref")
            model.set_adapter("default")
