"""Memory per training process, replicated against sharded (launch.shard = "fsdp"): two gloo processes on the CPU
train the same DPO steps on the embedded model, each way. Reported per process: the bytes of parameters it holds
(its shards, or the whole model), the bytes of LoRA gradients and optimizer state, its resident memory after the
steps (VmRSS) and its peak (VmHWM: loading the model whole before sharding it counts there), and the step losses
(the two modes must agree). JSON output.

    python bench/sharding.py --out bench/results/sharding.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def worker(rank, world, mode, args, tmp):
    import torch
    import torch.distributed as dist

    from rlaif.config import DPOConfig
    from rlaif.data import load_preferences
    from rlaif.models import load_model, load_tokenizer, resolve_model
    from rlaif.sharding import SHARD_ENV
    from rlaif.stages.dpo import train_preferences

    os.environ[SHARD_ENV] = mode
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rdv-{mode}", rank=rank, world_size=world)
    path = resolve_model(args.model)
    tok = load_tokenizer(path)
    pairs = load_preferences(args.data)[: args.pairs]
    cfg = DPOConfig(batch_size=2, epochs=1, max_length=args.max_length, checkpoint_every=0, warmup_ratio=0.0)
    trained, _, log = train_preferences(
        load_model(path, "cpu", "float32"), tok, pairs, cfg, 0, f"{tmp}/out-{mode}"
    )

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    params = sum(local(p).numel() * local(p).element_size() for p in trained.parameters())
    out = {
        "rank": rank,
        "param_mb": params / 2**20,
        "rss_mb": status_kb("VmRSS") / 1024,
        "peak_rss_mb": status_kb("VmHWM") / 1024,
        "losses": [x["loss"] for x in log],
    }
    Path(f"{tmp}/{mode}-{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def main() -> None:
    import tempfile

    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hh-harmless-dev.jsonl"))
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--out", default="bench/results/sharding.json")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="rlaif-shard-")
    result = {"settings": vars(args), "processes": 2}
    for mode in ("none", "fsdp"):
        torch.multiprocessing.spawn(worker, args=(2, mode, args, tmp), nprocs=2, join=True)
        result[mode] = [json.loads(Path(f"{tmp}/{mode}-{r}.json").read_text()) for r in range(2)]
    result["param_ratio"] = result["fsdp"][0]["param_mb"] / result["none"][0]["param_mb"]
    result["rss_ratio"] = result["fsdp"][0]["rss_mb"] / result["none"][0]["rss_mb"]
    result["losses_agree"] = all(
        abs(a - b) < 1e-4
        for a, b in zip(result["none"][0]["losses"], result["fsdp"][0]["losses"], strict=True)
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("param_ratio", "rss_ratio", "losses_agree")}))


if __name__ == "__main__":
    main()
