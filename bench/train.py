"""Our DPO trainer against TRL's DPOTrainer on the same pairs, model, LoRA, batch size and lengths.

Each trainer runs in its own process (same threads, same data). Reported: training tokens/s of each (real
prompt+response tokens of every pair, chosen and rejected, times epochs, over the wall time of the training
call), the ratio, the first-step loss of each (LoRA starts at B = 0, so both start at policy = reference)
and the first step's mean chosen/rejected log-probs. JSON output.

    python bench/train.py --data ../shared/data/hh-harmless-dev.jsonl --pairs 48 --out bench/results/train.json

Needs `pip install -e .[bench]` (TRL is a bench-only dependency).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import TRL_ARGS, fp32_model, run_each, settings, trl_lora  # noqa: E402


def setup(args):
    """What both trainers start from, in their own process: settings, tokenizer, fp32 model, the pairs, and
    the real tokens of every pair (chosen and rejected rows, prompt included) per epoch."""
    from rlaif.data import load_preferences
    from rlaif.stages.dpo import encode_pair

    s, tok, model = fp32_model(args)
    pairs = load_preferences(args.data)[: args.pairs]
    encoded = (encode_pair(tok, p["prompt"], p["chosen"], p["rejected"], s["max_length"]) for p in pairs)
    return s, tok, model, pairs, sum(len(e.chosen) + len(e.rejected) for e in encoded)


def run_ours(args) -> dict:
    from rlaif.config import DPOConfig
    from rlaif.stages.dpo import train_preferences
    from rlaif.trainer import merge

    s, tok, model, pairs, tokens = setup(args)
    cfg = DPOConfig(
        beta=s["beta"],
        learning_rate=s["learning_rate"],
        batch_size=s["batch_size"],
        max_length=s["max_length"],
        lora_r=s["lora_r"],
        lora_alpha=s["lora_alpha"],
        epochs=s["epochs"],
        warmup_ratio=0.0,
        lora_target=s["target"],
        checkpoint_every=0,
    )
    out = Path(args.work) / "ours"
    t0 = time.perf_counter()
    trained, metrics, log = train_preferences(model, tok, pairs, cfg, seed=0, out_dir=out)
    merge(trained)  # timed as before the trainer split: training includes the merge
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "tokens": tokens * s["epochs"],
        "tokens_per_s": tokens * s["epochs"] / seconds,
        "steps": metrics["steps"],
        "first_loss": log[0]["loss"],
        "first_chosen_logp": log[0]["chosen_logp"],
        "first_rejected_logp": log[0]["rejected_logp"],
        "padding_share": metrics["padding_share"],
    }


def run_trl(args) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from rlaif.data import to_trl

    s, tok, model, pairs, tokens = setup(args)
    # conversational rows: TRL applies the chat template as our trainer does
    ds = Dataset.from_list([to_trl(p, conversational=True) for p in pairs])
    cfg = DPOConfig(
        output_dir=str(Path(args.work) / "trl"),
        per_device_train_batch_size=s["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=s["learning_rate"],
        num_train_epochs=s["epochs"],
        beta=s["beta"],
        max_length=s["max_length"],
        truncation_mode="keep_end",
        **TRL_ARGS,
    )
    lora = trl_lora(s["lora_r"], s["lora_alpha"], s["target"])
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    logs = [r for r in trainer.state.log_history if "loss" in r]
    first = logs[0]
    return {
        "seconds": seconds,
        "tokens": tokens * s["epochs"],
        "tokens_per_s": tokens * s["epochs"] / seconds,
        "steps": trainer.state.global_step,
        "first_loss": first["loss"],
        "first_chosen_logp": first.get("logps/chosen"),
        "first_rejected_logp": first.get("logps/rejected"),
        "trl_version": __import__("trl").__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hh-harmless-dev.jsonl"))
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default="bench/results/train.json")
    ap.add_argument("--work", default="/tmp/rlaif-bench-train")
    ap.add_argument("--only", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        result = run_ours(args) if args.only == "ours" else run_trl(args)
        print("RESULT " + json.dumps(result))
        return
    results = run_each(__file__, ("trl", "ours"), sys.argv[1:])
    ours, trl = results["ours"], results["trl"]
    summary = {
        "settings": {
            **settings(args),
            "pairs": args.pairs,
            "data": args.data,
            "model": args.model,
            "threads": args.threads,
        },
        "ours": ours,
        "trl": trl,
        "tokens_per_s_ratio": ours["tokens_per_s"] / trl["tokens_per_s"],
        "first_loss_diff": abs(ours["first_loss"] - trl["first_loss"]),
        "first_loss_match_1e-3": abs(ours["first_loss"] - trl["first_loss"]) < 1e-3,
        "ln2": math.log(2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("tokens_per_s_ratio", "first_loss_diff")}))


if __name__ == "__main__":
    main()
