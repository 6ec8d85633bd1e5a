"""What activation checkpointing (`launch.activation_checkpointing`, rlaif/recompute.py) saves and costs: the same
DPO steps on the embedded model with the layers' activations kept (plain) and recomputed in the backward pass, each
in its own process. Reported per side: the training's peak memory (on the CPU the process's peak resident memory,
VmHWM, reset after the model is loaded, so the load does not count; on a GPU torch's peak allocation), seconds per
step, and the step losses (the two sides must agree). JSON output.

    python bench/recompute.py --pairs 8 --max-length 512 --out bench/results/recompute.json
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import device, dtype, report, two_sided  # noqa: E402

SIDES = ("plain", "recompute")


def peak_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run_side(args) -> dict:
    import tempfile

    import torch

    from rlaif.config import DPOConfig
    from rlaif.data import load_preferences
    from rlaif.models import load_model, load_tokenizer, resolve_model
    from rlaif.recompute import CHECKPOINTING_ENV
    from rlaif.stages.dpo import train_preferences

    torch.set_num_threads(args.threads)
    if args.only == "recompute":
        os.environ[CHECKPOINTING_ENV] = "1"
    path = resolve_model(args.model)
    tok = load_tokenizer(path)
    model = load_model(path, device(), dtype())
    pairs = load_preferences(args.data)[: args.pairs]
    cfg = DPOConfig(
        batch_size=args.batch_size,
        epochs=1,
        max_length=args.max_length,
        checkpoint_every=0,
        warmup_ratio=0.0,
        bucket=False,
    )
    on_gpu = device() == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS now: the peak from here on
        base = peak_kb() * 1024
    start = time.perf_counter()
    _, metrics, log = train_preferences(model, tok, pairs, cfg, 0, tempfile.mkdtemp(prefix="rlaif-bench-rc-"))
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if on_gpu else peak_kb() * 1024
    return {
        "device": device(),
        "peak_mb_above_loaded": (peak - base) / 2**20,
        "seconds": seconds,
        "seconds_per_step": seconds / len(log),
        "steps": len(log),
        "losses": [x["loss"] for x in log],
        "padding_share": metrics["padding_share"],
    }


def main() -> None:
    parsed = two_sided(
        __doc__,
        SIDES,
        8,
        "bench/results/recompute.json",
        run_side,
        lambda ap: ap.add_argument("--batch-size", type=int, default=4),
    )
    if parsed is None:
        return
    args, sides = parsed
    plain, rc = sides["plain"], sides["recompute"]
    result = {
        "settings": vars(args),
        **sides,
        "memory_ratio": rc["peak_mb_above_loaded"] / plain["peak_mb_above_loaded"],
        "time_ratio": rc["seconds_per_step"] / plain["seconds_per_step"],
        "max_loss_difference": max(abs(a - b) for a, b in zip(plain["losses"], rc["losses"], strict=True)),
    }
    report(args.out, result, ("memory_ratio", "time_ratio", "max_loss_difference"))


if __name__ == "__main__":
    main()
