"""Judge throughput per mode on the same labelled pairs: pairs/s for pointwise, logprob and rationale.

Each mode judges the same first N pairs of a labelled file with the same model (one process, fp32 on CPU or
bf16 on CUDA); reported: seconds, pairs/s, forward passes or generated replies, agreement with the labels
(a sanity check, not the quality study: see `rlaif judge-eval`), and the rationale parse rate. JSON output.

    python bench/judge.py --data ../shared/data/hh-harmless-dev.jsonl --pairs 24 --out bench/results/judge.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hh-harmless-dev.jsonl"))
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--modes", default="pointwise,logprob,rationale")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rationale-tokens", type=int, default=128)
    ap.add_argument("--out", default="bench/results/judge.json")
    args = ap.parse_args()

    import torch

    from rlaif.config import JudgeConfig, ModelConfig
    from rlaif.judge import build_judge
    from rlaif.judge_eval import evaluate, load_labelled
    from rlaif.models import pick_device, resolve_model
    from rlaif.pool import ModelPool
    from rlaif.principles import load_constitution

    device = pick_device("auto")
    path = resolve_model(args.model)
    pool = ModelPool(ModelConfig(policy=path), device)
    pairs = load_labelled(args.data)[: args.pairs]
    c = load_constitution("default")
    results = {}
    for mode in args.modes.split(","):
        jc = JudgeConfig(mode=mode, rationale_tokens=args.rationale_tokens, batch_size=args.batch_size)
        judge = build_judge(path, jc, c, pool)
        t0 = time.perf_counter()
        result = evaluate(pairs, judge, c)
        seconds = time.perf_counter() - t0
        s = result["summary"]
        results[mode] = {
            "seconds": seconds,
            "pairs_per_s": len(pairs) / seconds,
            "model_calls": {"pointwise": 2, "logprob": 2, "rationale": 2}[mode] * len(pairs),
            "agreement": s["agreement"],
            "unparsed_rate": s["unparsed_rate"],
        }
        print(mode, json.dumps(results[mode]), flush=True)
    out = {
        "settings": {**vars(args), "device": device, "threads": torch.get_num_threads()},
        "modes": results,
    }
    if "logprob" in results and "rationale" in results:
        out["logprob_over_rationale_speed"] = (
            results["logprob"]["pairs_per_s"] / results["rationale"]["pairs_per_s"]
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
