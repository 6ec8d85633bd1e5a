"""What `rlaif eval` costs on a finished run: seconds, and the work behind them.

Evaluates a copy of the run (its round folders without any cached evaluation answers, so every answer is sampled
and scored afresh) on held-out prompts, and counts what the time goes to: answers sampled, answers given a
transformers log-prob pass (an engine's samples keep the log-probs it reports; only a later round's answers are
read again, under round 0, for the KL) and responses a reward model scored (each distinct one once). JSON output.

    rlaif run runs/demo --rounds 2
    python bench/eval.py --run runs/demo --rounds 0,2 --limit 100 --out bench/results/eval.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "runs" / "demo"))
    ap.add_argument("--rounds", default="0,2")
    ap.add_argument("--harmful", default=str(ROOT.parent / "shared" / "data" / "redteam-prompts-dev.jsonl"))
    ap.add_argument("--benign", default=str(ROOT.parent / "shared" / "data" / "helpful-prompts-dev.jsonl"))
    ap.add_argument("--limit", type=int, default=50, help="prompts of each file")
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--backend", default="vllm", choices=["vllm", "transformers"])
    ap.add_argument("--out", default="bench/results/eval.json")
    args = ap.parse_args()

    import rlaif.evaluate as evaluate
    import rlaif.realign as realign
    import rlaif.reward.model as reward_model
    from rlaif.config import load_config
    from rlaif.evaluate import evaluate_run, load_eval_prompts
    from rlaif.models import pick_device

    counts = {"logprob_pass_answers": 0, "reward_rows": 0}

    def counted(module, name, key, rows_arg):
        real = getattr(module, name)

        def wrapper(*a, **kw):
            counts[key] += len(a[rows_arg])
            return real(*a, **kw)

        setattr(module, name, wrapper)

    counted(evaluate, "token_logprobs", "logprob_pass_answers", 1)
    counted(realign, "mixed_token_logprobs", "logprob_pass_answers", 3)
    counted(reward_model, "extract", "reward_rows", 2)

    ks = [int(k) for k in args.rounds.split(",")]
    overrides = [f"generate.backend={args.backend}", "vllm.max_model_len=1024"]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        skip = shutil.ignore_patterns("eval_responses_*", "eval*.json", "eval.png")
        shutil.copytree(args.run, run, ignore=skip)
        prompts = load_eval_prompts(args.harmful, args.benign, args.limit, args.samples)
        config = load_config(run, overrides)
        t0 = time.perf_counter()
        summary = evaluate_run(
            run, ks, prompts, config, backend=args.backend, device=pick_device(config.model.device)
        )
        seconds = time.perf_counter() - t0
    result = {
        "run": args.run,
        "rounds": ks,
        "backend": args.backend,
        "answers": len(prompts) * len(ks),
        "answers_per_round": len(prompts),
        **counts,
        "seconds": round(seconds, 1),
        "rows": [
            {
                "label": r["label"],
                "refusal_rate_harmful": r["refusal_rate_harmful"],
                "over_refusal_benign": r["over_refusal_benign"],
                "kl_from_round0": r["kl_from_round0"],
            }
            for r in summary["rows"]
        ],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
