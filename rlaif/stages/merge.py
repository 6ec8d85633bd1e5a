"""The merge stage: the trained LoRA adapter is folded into the weights and saved as the round's model
(safetensors), which becomes the next round's generator, reference and (by default) judge.

The trained model is taken from the model pool when the dpo stage just ran; after a restart it is rebuilt
from the round's starting model and adapter/. A round that trained nothing keeps its starting model.

Writes model/ (atomically: a temp folder renamed into place). With `merge.defer`, nothing is merged: the round's
model is lora/, one LoRA adapter over the round-1 starting model that composes every round's adapter so far
(rlaif/lora.py), which vLLM serves with `enable_lora` and transformers folds in memory; `rlaif merge RUN`
writes the full weights when wanted. With `merge.scale` other than 1, the round's trained change is folded in
times that factor (above 1: extrapolated past the trained adapter, ExPO).

    rlaif run runs/demo
    rlaif run runs/demo --set merge.defer=true
    rlaif run runs/demo --set merge.scale=1.5
"""

from __future__ import annotations

import time

from rlaif.lora import base_of, compose, is_lora
from rlaif.models import save_model
from rlaif.trainer import merge

PRODUCES_MODEL = True
LOWER_ON_OOM = "dpo.lora_r (the merge holds the model and its adapter)"


def outputs(figures: dict) -> list[str]:
    if figures.get("deferred"):
        return ["lora"]
    return ["model"] if figures.get("merged") else []


def validate(run) -> None:
    scale = run.config.merge.scale
    if not scale > 0:
        raise ValueError(f"merge.scale must be above 0 (1 folds the adapter in as trained), got {scale}")


def scale_adapter(model, scale: float) -> int:
    """Multiply the active LoRA adapter's scaling by `scale` in every LoRA layer of a peft model (before it is
    merged: the merged weights are then W + scale * (alpha/r) B A). Returns how many layers were scaled."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        for name in layer.active_adapters:
            if name in layer.scaling:
                layer.scaling[name] *= scale
    return len(layers)


def run(round_) -> dict:

    adapter = round_.dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        return {
            "merged": False,
            "model": round_.model,
            "seconds": 0.0,
        }  # nothing was trained: the model stays
    t0 = time.perf_counter()
    if round_.config.merge.defer:
        previous = round_.model if is_lora(round_.model) else None
        base = base_of(round_.model) if previous else round_.model
        round_.pool.release(str(adapter))
        target = compose(
            previous, adapter, round_.model, base, round_.dir / "lora", scale=round_.config.merge.scale
        )
        round_.progress.note(f"round {round_.k}: the model is kept as an adapter over {base}: {target}")
        return {"merged": False, "deferred": True, "model": str(target), "seconds": time.perf_counter() - t0}
    trained = round_.pool.take_if_present(str(adapter))
    if trained is None:
        from peft import PeftModel

        base, tok = round_.pool.take(round_.model)
        trained = (PeftModel.from_pretrained(base, str(adapter)), tok)
    model, tok = trained
    scale = round_.config.merge.scale
    if scale != 1.0:
        n = scale_adapter(model, scale)
        round_.progress.note(
            f"round {round_.k}: the adapter's change is folded in times {scale} ({n} layers)"
        )
    merged = merge(model)
    target = round_.dir / "model"
    round_.progress.note(f"saving the merged model to {target}")
    save_model(merged, tok, target)
    round_.pool.put(str(target), merged, tok)
    return {"merged": True, "model": str(target), "scale": scale, "seconds": time.perf_counter() - t0}
