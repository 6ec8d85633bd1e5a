"""The merge stage: the trained LoRA adapter is folded into the weights and saved as the round's model
(safetensors), which becomes the next round's generator, reference and (by default) judge.

The trained model is taken from the model pool when the train stage just ran; after a restart it is rebuilt
from the round's starting model and adapter/. A round that trained nothing keeps its starting model.

Writes model/ (atomically: a temp folder renamed into place).

    rlaif run runs/demo
"""

from __future__ import annotations

import time

PRODUCES_MODEL = True
LOWER_ON_OOM = "train.lora_r (the merge holds the model and its adapter)"


def outputs(figures: dict) -> list[str]:
    return ["model"] if figures.get("merged") else []


def validate(run) -> None:
    pass


def run(r) -> dict:
    from rlaif.models import save_model
    from rlaif.trainer import merge

    adapter = r.dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        return {"merged": False, "model": r.model, "seconds": 0.0}  # nothing was trained: the model stays
    t0 = time.perf_counter()
    trained = r.pool.take_if_present(str(adapter))
    if trained is None:
        from peft import PeftModel

        base, tok = r.pool.take(r.model)
        trained = (PeftModel.from_pretrained(base, str(adapter)), tok)
    model, tok = trained
    merged = merge(model)
    target = r.dir / "model"
    r.progress.note(f"saving the merged model to {target}")
    save_model(merged, tok, target)
    r.pool.put(str(target), merged, tok)
    return {"merged": True, "model": str(target), "seconds": time.perf_counter() - t0}
