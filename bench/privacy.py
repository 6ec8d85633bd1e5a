"""DP-SGD's cost in the trainer loop: DPO with LoRA on the same pairs, without and with differential privacy
(privacy.epsilon), on the same model, batch and lengths. Each side runs in its own process.

Reported per side: seconds per optimizer step (DP: without the one-off solve of sigma, reported apart) and per training example (a DP lot's size varies with Poisson
sampling: per example is the fair unit), peak resident memory of the process, the first-step loss; the ratios
(goal: DP at most 2x the time per example). The per-example gradients come from hooks on the LoRA layers
(rlaif/privacy.py): one extra einsum per layer and a per-example copy of the LoRA gradients (LoRA's parameters
only, not the model's). JSON output.

    python bench/privacy.py --data ../shared/data/hh-harmless-dev.jsonl --pairs 32 --out bench/results/privacy.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import fp32_model, run_each  # noqa: E402


def run_side(args, private: bool) -> dict:
    from rlaif.config import DPOConfig
    from rlaif.config.privacy import PrivacyConfig
    from rlaif.data import load_preferences
    from rlaif.stages.dpo import train_preferences

    s, tok, model = fp32_model(args)
    pairs = load_preferences(args.data)[: args.pairs]
    cfg = DPOConfig(
        beta=s["beta"],
        learning_rate=s["learning_rate"],
        batch_size=s["batch_size"],
        max_length=s["max_length"],
        lora_r=s["lora_r"],
        lora_alpha=s["lora_alpha"],
        epochs=1,
        warmup_ratio=0.0,
        lora_target=s["target"],
        checkpoint_every=0,
    )
    privacy = PrivacyConfig(epsilon=args.epsilon) if private else None
    t0 = time.perf_counter()
    _, metrics, log = train_preferences(
        model, tok, pairs, cfg, 0, Path(args.work) / ("dp" if private else "plain"), privacy=privacy
    )
    seconds = time.perf_counter() - t0
    seen = sum(x["pairs"] for x in log)
    accounting = 0.0
    if private:  # solving sigma for the budget happens once per training: timed apart from the steps
        from rlaif.privacy import noise_for

        p = metrics["privacy"]
        t1 = time.perf_counter()
        noise_for(args.epsilon, p["delta"], p["sample_rate"], p["dp_steps"])
        accounting = time.perf_counter() - t1
        seconds -= accounting
    return {
        "accounting_seconds": accounting,
        "seconds": seconds,
        "steps": len(log),
        "examples_seen": seen,
        "seconds_per_step": seconds / len(log),
        "seconds_per_example": seconds / max(1, seen),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "first_loss": log[0]["loss"],
        **({"privacy": metrics["privacy"]} if private else {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hh-harmless-dev.jsonl"))
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--epsilon", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default="bench/results/privacy.json")
    ap.add_argument("--work", default="/tmp/rlaif-bench-privacy")
    ap.add_argument("--only", choices=["plain", "dp"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        print("RESULT " + json.dumps(run_side(args, args.only == "dp")))
        return
    r = run_each(__file__, ("plain", "dp"), sys.argv[1:])
    summary = {
        "settings": {k: v for k, v in vars(args).items() if k != "only"},
        **r,
        "time_per_example_ratio": r["dp"]["seconds_per_example"] / r["plain"]["seconds_per_example"],
        "peak_memory_ratio": r["dp"]["peak_rss_mb"] / r["plain"]["peak_rss_mb"],
        "goal_time_ratio": 2.0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("time_per_example_ratio", "peak_memory_ratio")}))


if __name__ == "__main__":
    main()
