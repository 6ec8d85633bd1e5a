"""Our RLOO round against TRL's RLOOTrainer on the same work: the same prompts, model, k samples per prompt,
completion length, LoRA settings, learning rate, one pass, and the same reward (the shipped reward head, as a
reward function for TRL). Each runs in its own process.

Reported: wall time of the whole loop (sampling, rewards, the update) and of the update alone, tokens/s of the
update (prompt + completion tokens of every sample put through the training forward and backward), and
the ratio. JSON output.

    python bench/rl.py --prompts 8 --k 4 --max-new-tokens 48 --out bench/results/rl.json

Needs `pip install -e .[bench]` (TRL is a bench-only dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import TRL_ARGS, device, dtype  # noqa: E402

TARGET = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def prompts(args) -> list[str]:
    from rlaif.data import load_prompts

    return [p["prompt"] for p in load_prompts(args.prompt_file)][: args.prompts]


def run_ours(args) -> dict:
    """generate -> rl (RLOO, 1 inner epoch) as a round of a run; the stage times come from stages.json."""
    import torch

    from rlaif.rounds import run

    torch.set_num_threads(args.threads)
    d = Path(tempfile.mkdtemp()) / "run"
    d.mkdir(parents=True)
    (d / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts(args)))
    (d / "config.toml").write_text(
        f"""
[model]
policy = {json.dumps(args.model)}
[round]
stages = ["generate", "rl"]
[generate]
backend = "transformers"
samples_per_prompt = {args.k}
max_new_tokens = {args.max_new_tokens}
temperature = 1.0
top_p = 1.0
[rl]
algorithm = "rloo"
reward = "reward_model"
reward_model = "smollm2-135m-harmless"
kl = "reward"
beta = {args.beta}
learning_rate = {args.learning_rate}
epochs = 1
batch_size = {args.k}
lora_r = 16
lora_alpha = 32
warmup_ratio = 0.0
checkpoint_every = 0
max_length = 1024
"""
    )
    t0 = time.perf_counter()
    (m,) = run(d, rounds=1)
    total = time.perf_counter() - t0
    log = [json.loads(x) for x in (d / "round_1" / "rl_log.jsonl").read_text().splitlines()]
    stages = json.loads((d / "round_1" / "stages.json").read_text())
    rl = m["rl"]
    tokens = rl_tokens(d)
    # the update alone: the trainer loop (rollout log-probs included), without sampling and reward scoring
    update = rl["update_seconds"]
    return {
        "loop_seconds": total,
        "generate_seconds": stages["generate"]["seconds"],
        "reward_seconds": rl["reward_seconds"],
        "update_seconds": update,
        "update_tokens": tokens,
        "update_tokens_per_s": tokens / update,
        "steps": len(log),
        "reward_mean": rl["reward_mean"],
    }


def rl_tokens(run_dir: Path) -> int:
    """Prompt + completion tokens of every rollout, as the training forward sees them."""
    from rlaif.data import read_jsonl
    from rlaif.models import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    n = 0
    for x in read_jsonl(run_dir / "round_1" / "responses.jsonl"):
        text = tok.apply_chat_template(
            [{"role": "user", "content": x["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        n += len(tok(text, add_special_tokens=False).input_ids) + len(x["token_ids"])
    return n


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import RLOOConfig, RLOOTrainer

    from rlaif.config import ModelConfig
    from rlaif.models import load_model, load_tokenizer, resolve_model
    from rlaif.pool import ModelPool
    from rlaif.reward.model import RewardModel

    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    tok = load_tokenizer(path)
    rm = RewardModel("smollm2-135m-harmless", ModelPool(ModelConfig(dtype=dtype()), device()))

    def reward(prompts, completions, **kw):
        def text(c):
            return c[-1]["content"] if isinstance(c, list) else c

        def conv(p):
            return p if isinstance(p, str) else [m for m in p if m["role"] != "system"]

        return rm.rewards([(conv(p), text(c), None) for p, c in zip(prompts, completions, strict=True)])

    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts(args)])
    cfg = RLOOConfig(
        output_dir=tempfile.mkdtemp(),
        num_generations=args.k,
        per_device_train_batch_size=args.k,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        learning_rate=args.learning_rate,
        beta=args.beta,
        num_train_epochs=1,
        **TRL_ARGS,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGET, task_type="CAUSAL_LM")
    trainer = RLOOTrainer(
        model=load_model(path, device(), dtype()),
        reward_funcs=[reward],
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        peft_config=lora,
    )
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    logs = [r for r in trainer.state.log_history if "loss" in r]
    return {
        "loop_seconds": total,
        "steps": trainer.state.global_step,
        "reward_mean": sum(r.get("reward", 0.0) for r in logs) / max(1, len(logs)),
        "trl_version": __import__("trl").__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-file", default=str(ROOT / "runs" / "demo" / "prompts.jsonl"))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.05)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default="bench/results/rl.json")
    ap.add_argument("--only", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        print("RESULT " + json.dumps(run_ours(args) if args.only == "ours" else run_trl(args)))
        return
    results = {}
    for which in ("trl", "ours"):
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
        **results,
        "loop_speedup": results["trl"]["loop_seconds"] / results["ours"]["loop_seconds"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({"loop_speedup": summary["loop_speedup"]}))


if __name__ == "__main__":
    main()
