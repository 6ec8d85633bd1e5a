"""Generation throughput: the same prompts and sampling settings through the transformers and vLLM backends.

Each backend runs in its own process, so peak memory is its own: the resident memory of that process and
all its descendants summed (vLLM's engine core and worker are grandchildren), sampled every 0.2 s. Engine start-up (and vLLM's graph compilation) is timed apart from
generation; tokens/s counts generated tokens over generation time only.

    python bench/generation.py --out bench/results/generation.json
    python bench/generation.py --model /path/to/model --n 4 --max-new-tokens 128 --backends vllm
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class TreeMemory:
    """Peak resident memory of this process and all its descendants together (vLLM's engine core and
    worker are grandchildren), sampled every 0.2 s on a thread."""

    def __init__(self):
        import threading

        import psutil

        self.peak, self._stop = 0, threading.Event()
        self._me = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.wait(0.2):
            total = 0
            for p in [self._me, *self._me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def worker(args) -> dict:
    """Run one backend in this process; print its figures as one JSON line."""
    memory = TreeMemory()
    sys.path.insert(0, str(ROOT))
    from rlaif.config import GenerateConfig, ModelConfig, VLLMConfig
    from rlaif.data import load_prompts
    from rlaif.models import load_tokenizer, pick_device, resolve_model

    prompts = [p["prompt"] for p in load_prompts(args.prompts)][: args.limit or None]
    path = resolve_model(args.model)
    mcfg = ModelConfig(policy=path)
    gcfg = GenerateConfig(
        backend="transformers" if args.worker == "plain" else args.worker,
        max_new_tokens=args.max_new_tokens,
        temperature=0.8,
        top_p=0.95,
        batch_size=args.batch_size,
    )
    t0 = time.perf_counter()
    engine = None
    if args.worker == "vllm":
        from rlaif.generate.vllm_backend import VLLMEngine, VLLMGenerator

        engine = VLLMEngine(path, VLLMConfig(enforce_eager=args.enforce_eager), mcfg, seed=0)
        gen = VLLMGenerator(engine, load_tokenizer(path), gcfg)
    else:
        from rlaif.generate.hf import TransformersGenerator

        # "plain": the same sampling without recording log-probs, the baseline their cost is measured against
        gen = TransformersGenerator(path, gcfg, mcfg, record_logprobs=args.worker != "plain")
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    samples = gen.generate(prompts, args.n, seed=0)
    seconds = time.perf_counter() - t0
    cuda_peak = None
    if args.worker in ("transformers", "plain") and pick_device("auto") == "cuda":
        import torch

        cuda_peak = torch.cuda.max_memory_allocated() / 2**20
    if engine is not None:
        engine.close()
    tokens = sum(s.tokens for group in samples for s in group)
    return {
        "backend": args.worker,
        "prompts": len(prompts),
        "responses": sum(len(g) for g in samples),
        "generated_tokens": tokens,
        "startup_s": startup,
        "generate_s": seconds,
        "tokens_per_s": tokens / seconds,
        "requests_per_s": len(prompts) / seconds,
        "peak_rss_mb": memory.stop(),
        "cuda_peak_allocated_mb": cuda_peak,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", default=str(ROOT / "runs/demo/prompts.jsonl"))
    ap.add_argument("--limit", type=int, default=0, help="use the first N prompts (0 = all)")
    ap.add_argument("--n", type=int, default=2, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32, help="transformers: sequences decoded together")
    ap.add_argument("--enforce-eager", action="store_true", help="vLLM: skip graph compilation")
    ap.add_argument(
        "--backends",
        default="transformers,vllm",
        help="transformers, plain (transformers without log-probs), vllm",
    )
    ap.add_argument("--out", default=str(ROOT / "bench/results/generation.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    results = {}
    for backend in args.backends.split(","):
        cmd = [sys.executable, __file__, "--worker", backend, *sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{backend} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        results[backend] = json.loads(line.removeprefix("RESULT "))
        print(json.dumps(results[backend]), flush=True)
    report = {
        "bench": "generation",
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "out")},
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "results": results,
    }
    if "transformers" in results and "vllm" in results:
        report["ratio_vllm_over_transformers"] = {
            "tokens_per_s": results["vllm"]["tokens_per_s"] / results["transformers"]["tokens_per_s"],
            "requests_per_s": results["vllm"]["requests_per_s"] / results["transformers"]["requests_per_s"],
            "peak_rss": results["vllm"]["peak_rss_mb"] / results["transformers"]["peak_rss_mb"],
        }
    if "transformers" in results and "plain" in results:
        # what recording each sampled token's log-prob costs: 1.0 = nothing
        report["logprobs_over_plain_tokens_per_s"] = (
            results["transformers"]["tokens_per_s"] / results["plain"]["tokens_per_s"]
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
