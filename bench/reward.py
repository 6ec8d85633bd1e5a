"""Our LoRA reward-model trainer against TRL's RewardTrainer on the same pairs, model, LoRA, batch size and
lengths; then both models' accuracy on held-out labelled pairs. Our frozen-body head is timed beside them.

Each trainer runs in its own process (same threads, same data: pairs that fit in --max-length whole, since TRL
drops longer pairs where ours would cut them). Reported: training tokens/s (real tokens of
every chosen and rejected sequence, times epochs, over the wall time of the training call), the first-step
loss (both start near ln 2), and accuracy on the first --dev pairs of the dev file. JSON output.

    python bench/reward.py --pairs 32 --dev 100 --out bench/results/reward.json

Needs `pip install -e .[bench]` (TRL is a bench-only dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import TRL_ARGS, device, dtype  # noqa: E402

TARGET = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def setup(args):
    import torch

    from rlaif.config import ModelConfig
    from rlaif.data import load_preferences
    from rlaif.judge_eval import load_labelled
    from rlaif.models import resolve_model
    from rlaif.pool import ModelPool
    from rlaif.reward.format import encode

    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    pool = ModelPool(ModelConfig(dtype=dtype()), device())
    tok = pool.tokenizer(path)
    # only pairs that fit whole: TRL's RewardTrainer drops longer ones while ours truncates them, so the two
    # would otherwise train on different work
    pairs = [
        p
        for p in load_preferences(args.data)
        if all(
            len(encode(tok, p["prompt"], p[k], 10**6)[0]) <= args.max_length for k in ("chosen", "rejected")
        )
    ][: args.pairs]
    dev = load_labelled(args.dev_data)[: args.dev]
    tokens = sum(
        len(encode(tok, p["prompt"], p[k], args.max_length)[0]) for p in pairs for k in ("chosen", "rejected")
    )
    return path, pool, tok, pairs, dev, tokens


def accuracy(score, dev) -> float:
    """Share of dev pairs whose chosen response gets the higher score (ties half)."""
    rc = score([(p["messages"], p["chosen"]) for p in dev])
    rr = score([(p["messages"], p["rejected"]) for p in dev])
    return sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(rc, rr, strict=True)) / len(dev)


def run_ours(args, mode: str) -> dict:
    from rlaif.reward.fit import train_frozen
    from rlaif.reward.lora import train_lora
    from rlaif.reward.model import RewardModel
    from rlaif.trainer import LoopConfig

    path, pool, tok, pairs, dev, tokens = setup(args)
    out = Path(args.work) / f"ours-{mode}"
    t0 = time.perf_counter()
    if mode == "lora":
        cfg = LoopConfig(
            epochs=1,
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            max_length=args.max_length,
            lora_r=16,
            lora_alpha=32,
            warmup_ratio=0.0,
            checkpoint_every=0,
        )
        spec = train_lora(pairs, path, out, pool, cfg, max_length=args.max_length)
        first = spec.figures["loss_first"]
    else:
        spec = train_frozen(pairs, path, out, pool, max_length=args.max_length)
        first = None
    seconds = time.perf_counter() - t0
    from rlaif.config import ModelConfig
    from rlaif.pool import ModelPool

    rm = RewardModel(out, ModelPool(ModelConfig(dtype=dtype()), device()))
    acc = accuracy(lambda rows: rm.rewards([(c, r, None) for c, r in rows]), dev)
    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "first_loss": first,
        "dev_accuracy": acc,
    }


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from rlaif.data import to_trl

    path, _, tok, pairs, dev, tokens = setup(args)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    ds = Dataset.from_list([to_trl(p, conversational=True) for p in pairs])
    cfg = RewardConfig(
        output_dir=str(Path(args.work) / "trl"),
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        num_train_epochs=1,
        max_length=args.max_length,
        **TRL_ARGS,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGET, task_type="SEQ_CLS")
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    logs = [r for r in trainer.state.log_history if "loss" in r]
    net = trainer.model.eval()

    def score(rows):
        out = []
        for conv, resp in rows:
            msgs = ([{"role": "user", "content": conv}] if isinstance(conv, str) else conv) + [
                {"role": "assistant", "content": resp}
            ]
            ids = tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"][
                -args.max_length :
            ]
            with torch.inference_mode():
                out.append(net(input_ids=torch.tensor([ids])).logits[0, 0].item())
        return out

    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "first_loss": logs[0]["loss"] if logs else None,
        "dev_accuracy": accuracy(score, dev),
        "trl_version": __import__("trl").__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hh-harmless-train.jsonl"))
    ap.add_argument("--dev-data", default=str(ROOT.parent / "shared" / "data" / "hh-harmless-dev.jsonl"))
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--dev", type=int, default=100)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default="bench/results/reward.json")
    ap.add_argument("--work", default="/tmp/rlaif-bench-reward")
    ap.add_argument("--only", choices=["lora", "frozen", "trl"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        result = run_trl(args) if args.only == "trl" else run_ours(args, args.only)
        print("RESULT " + json.dumps(result))
        return
    results = {}
    for which in ("trl", "lora", "frozen"):
        proc = subprocess.run(
            [sys.executable, __file__, "--only", which] + sys.argv[1:], capture_output=True, text=True
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{which} failed:\n{proc.stderr[-4000:]}")
        results[which] = json.loads(line[len("RESULT ") :])
        print(which, json.dumps(results[which]), flush=True)
    summary = {
        "settings": {k: v for k, v in vars(args).items() if k != "only"},
        "trl": results["trl"],
        "ours_lora": results["lora"],
        "ours_frozen": results["frozen"],
        "lora_tokens_per_s_ratio": results["lora"]["tokens_per_s"] / results["trl"]["tokens_per_s"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({"lora_tokens_per_s_ratio": summary["lora_tokens_per_s_ratio"]}))


if __name__ == "__main__":
    main()
