"""What the benchmarks against TRL share: each side in its own process, the LoRA settings both sides train with.

Each benchmark script runs itself again as `SCRIPT --only NAME ...` for each side, which prints one line
`RESULT {json}`; `run_each` collects them (the same threads and data for every side, no state shared).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

TARGET = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def run_each(script: str, names: tuple[str, ...], argv: list[str]) -> dict:
    """{name: result} of `python SCRIPT --only NAME ARGV` for each name, in order; exits naming the side that
    failed, with the end of its stderr."""
    results = {}
    for which in names:
        proc = subprocess.run(
            [sys.executable, script, "--only", which, *argv], capture_output=True, text=True
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{which} failed:\n{proc.stderr[-4000:]}")
        results[which] = json.loads(line[len("RESULT ") :])
        print(which, json.dumps(results[which]), flush=True)
    return results


def settings(args) -> dict:
    """The preference-training settings both sides of bench/train.py and bench/kto.py use."""
    return dict(
        beta=0.1,
        learning_rate=5e-4,
        batch_size=args.batch_size,
        max_length=args.max_length,
        lora_r=16,
        lora_alpha=32,
        epochs=1,
        target=list(TARGET),
    )


def device() -> str:
    """Where the benchmarks run: "cuda" when a GPU is there (bench/gpu.py), else "cpu"; RLAIF_BENCH_DEVICE wins."""
    if os.environ.get("RLAIF_BENCH_DEVICE"):
        return os.environ["RLAIF_BENCH_DEVICE"]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def dtype() -> str:
    """fp32 on the CPU (bf16 is emulated there), bf16 on a GPU."""
    return "bfloat16" if device() == "cuda" else "float32"


def fp32_model(args):
    """(settings, tokenizer, model) in a side's own process, with the configured threads: fp32 on the CPU, bf16
    on a GPU (the name stays: on the CPU, where most runs are, it is fp32)."""
    import torch

    from rlaif.models import load_model, load_tokenizer, resolve_model

    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    return settings(args), load_tokenizer(path), load_model(path, device(), dtype())


def trl_lora(r: int = 16, alpha: int = 32, target=TARGET):
    """TRL's side of the LoRA both sides train."""
    from peft import LoraConfig

    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(target), task_type="CAUSAL_LM"
    )


TRL_ARGS = dict(
    lr_scheduler_type="linear",
    warmup_steps=0,
    logging_steps=1,
    save_strategy="no",
    report_to=[],
    use_cpu=device() == "cpu",
    bf16=device() == "cuda",
    seed=0,
    dataloader_num_workers=0,
    disable_tqdm=True,
)
"""The TrainingArguments every TRL side runs with: linear decay without warm-up (as ours), a log record per
step, nothing saved or reported, fp32 on the CPU and bf16 on a GPU (as ours)."""


def two_sided(doc: str, sides: tuple[str, ...], pairs: int, out: str, run_side, extra=None):
    """The shared command line of a benchmark that runs each side in its own process on HH pairs: parses it;
    in a side's process (`--only NAME`) prints `RESULT {json}` of `run_side(args)` and returns None; else returns
    (args, {side: result}). `extra(ap)` adds the script's own options."""
    import argparse
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=str(root.parent / "shared" / "data" / "hh-harmless-dev.jsonl"))
    ap.add_argument("--pairs", type=int, default=pairs)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=out)
    ap.add_argument("--only", choices=sides, help=argparse.SUPPRESS)
    if extra is not None:
        extra(ap)
    args = ap.parse_args()
    if args.only:
        print("RESULT " + json.dumps(run_side(args)), flush=True)
        return None
    return args, run_each(sys.argv[0], sides, sys.argv[1:])


def report(out: str, result: dict, summary: tuple[str, ...]) -> None:
    """Write `result` as JSON to `out` and print the `summary` keys of it."""
    from pathlib import Path

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in summary}))
