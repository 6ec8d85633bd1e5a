"""Our KTO (dpo.loss = "kto", rlaif/kto.py) against TRL's KTOTrainer on the same unpaired examples, model, LoRA,
batch size, lengths and beta.

The examples are preference pairs unpaired (chosen desirable, rejected undesirable), as TRL does. Each trainer
runs in its own process (same threads, same data). Reported: training tokens/s of each (real prompt+completion
tokens of every example, times epochs, over the wall time of the training call), the ratio (goal: at least 1.3),
and the first-step loss of each (LoRA starts at B = 0: policy = reference, r = 0, z0 = 0, so 0.5). JSON output.

    python bench/kto.py --data ../shared/data/hh-harmless-dev.jsonl --pairs 24 --out bench/results/kto.json

Needs `pip install -e .[bench]` (TRL is a bench-only dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import TRL_ARGS, fp32_model, run_each, settings, trl_lora  # noqa: E402


def setup(args):
    """What both trainers start from, in their own process: settings, tokenizer, fp32 model, the unpaired
    examples, and the real tokens of every example (prompt included) per epoch."""
    from rlaif.data import load_preferences, unpair
    from rlaif.trainer import encode_response

    s, tok, model = fp32_model(args)
    examples = unpair(load_preferences(args.data)[: args.pairs])
    tokens = sum(
        len(encode_response(tok, e["prompt"], e["completion"], s["max_length"])[0]) for e in examples
    )
    return s, tok, model, examples, tokens


def run_ours(args) -> dict:
    from rlaif.config import DPOConfig
    from rlaif.kto import KTOTask
    from rlaif.trainer import train

    s, tok, model, examples, tokens = setup(args)
    cfg = DPOConfig(
        loss="kto",
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
    _, metrics, log = train(model, KTOTask(tok, cfg), examples, cfg, seed=0, out_dir=out)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "tokens": tokens * s["epochs"],
        "tokens_per_s": tokens * s["epochs"] / seconds,
        "steps": metrics["steps"],
        "first_loss": log[0]["loss"],
        "first_kl": log[0]["kl"],
        "padding_share": metrics["padding_share"],
    }


def run_trl(args) -> dict:
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    s, tok, model, examples, tokens = setup(args)
    # conversational rows: TRL applies the chat template as our trainer does
    rows = []
    for e in examples:
        prompt = e["prompt"] if isinstance(e["prompt"], list) else [{"role": "user", "content": e["prompt"]}]
        rows.append(
            {
                "prompt": prompt,
                "completion": [{"role": "assistant", "content": e["completion"]}],
                "label": e["label"],
            }
        )
    ds = Dataset.from_list(rows)
    cfg = KTOConfig(
        output_dir=str(Path(args.work) / "trl"),
        per_device_train_batch_size=s["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=s["learning_rate"],
        num_train_epochs=s["epochs"],
        # KTO estimates its KL term from the batch's rotated completions: TRL requires sequential batches, and
        # its sampler then has no length, so the steps are given
        train_sampling_strategy="sequential",
        max_steps=-(-len(rows) // s["batch_size"]) * s["epochs"],
        beta=s["beta"],
        max_length=s["max_length"],
        **TRL_ARGS,
    )
    lora = trl_lora(s["lora_r"], s["lora_alpha"], s["target"])
    trainer = KTOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    logs = [r for r in trainer.state.log_history if "loss" in r]
    return {
        "seconds": seconds,
        "tokens": tokens * s["epochs"],
        "tokens_per_s": tokens * s["epochs"] / seconds,
        "steps": trainer.state.global_step,
        "first_loss": logs[0]["loss"],
        "first_kl": logs[0].get("kl"),
        "trl_version": __import__("trl").__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hh-harmless-dev.jsonl"))
    ap.add_argument(
        "--pairs", type=int, default=24, help="preference pairs, unpaired into twice as many examples"
    )
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default="bench/results/kto.json")
    ap.add_argument("--work", default="/tmp/rlaif-bench-kto")
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
            "examples": 2 * args.pairs,
            "data": args.data,
            "model": args.model,
            "threads": args.threads,
        },
        "ours": ours,
        "trl": trl,
        "tokens_per_s_ratio": ours["tokens_per_s"] / trl["tokens_per_s"],
        "first_loss_diff": abs(ours["first_loss"] - trl["first_loss"]),
        "first_loss_match_1e-3": abs(ours["first_loss"] - trl["first_loss"]) < 1e-3,
        "goal_ratio": 1.3,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("tokens_per_s_ratio", "first_loss_diff")}))


if __name__ == "__main__":
    main()
