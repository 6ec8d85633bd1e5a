"""Generation and judging of one round on a fleet of `vllm serve` processes against vLLM's offline engine.

The same run (the demo's prompts, the embedded model, generate -> judge -> preferences) three ways:
  engine   generate.backend = judge.backend = "vllm" (the offline engine in a child process)
  serve1   generate.backend = judge.backend = "openai" on one `vllm serve` on loopback
  serve2   the same on two `vllm serve` processes on loopback (requests spread over both)
Each writes its own run folder; the figures are the stages' own seconds (servers' start-up apart), and the
records are compared: keys and value types per file, and the share of responses whose sampled tokens equal
the engine's (same seeds per prompt). On one machine the servers share its cores: this measures the
overhead of the HTTP path and the schema, not a speed-up, which needs servers on other machines or GPUs.

    python bench/fleet.py --out bench/results/fleet.json
    python bench/fleet.py --prompts-per-round 48 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def servers(model: str, n: int, log_dir: Path, max_model_len: int):
    """`n` vllm serve processes of `model` on loopback; yields (their base URLs, seconds until all answered)."""
    env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_LOGGING_LEVEL": "WARNING"}
    procs, urls = [], []
    t0 = time.perf_counter()
    try:
        for i in range(n):
            port = free_port()
            cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
            cmd += ["--served-model-name", "policy", "--host", "127.0.0.1", "--port", str(port)]
            cmd += ["--dtype", "float32", "--max-model-len", str(max_model_len), "--max-logprobs", "100"]
            cmd += ["--gpu-memory-utilization", "0.15", "--no-enable-chunked-prefill"]
            log = open(log_dir / f"serve{i}.log", "w")  # noqa: SIM115 - closed with the process
            procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
            urls.append(f"http://127.0.0.1:{port}/v1")
        for (proc, _), url in zip(procs, urls, strict=True):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"vllm serve exited; see {log_dir}")
                try:
                    with urllib.request.urlopen(url + "/models", timeout=2):
                        break
                except OSError:
                    time.sleep(1)
        yield urls, time.perf_counter() - t0
    finally:
        for proc, log in procs:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def one_round(run_dir: Path, overrides: list[str]) -> dict:
    sys.path.insert(0, str(ROOT))
    from rlaif.rounds import run

    t0 = time.perf_counter()
    (m,) = run(run_dir, rounds=1, overrides=overrides)
    return {
        "wall_seconds": time.perf_counter() - t0,
        "generate_seconds": m["generate"]["seconds"],
        "judge_seconds": m["judge"]["seconds"],
        "tokens_per_s": m["generate"]["tokens_per_s"],
        "responses": m["generate"]["responses"],
        "pairs": m["judge"]["pairs"],
        "endpoints": m["generate"].get("endpoints"),
    }


def shape(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/results/fleet.json")
    p.add_argument("--work", default="/tmp/rlaif-bench-fleet")
    p.add_argument("--prompts-per-round", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=96)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from rlaif.models import resolve_model

    model = resolve_model("smollm2-135m-instruct")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    common = [
        'round.stages=["generate", "judge", "preferences"]',
        f"data.prompts_per_round={args.prompts_per_round}",
        f"generate.max_new_tokens={args.max_new_tokens}",
        "judge.mode=pointwise",
        "vllm.max_model_len=2048",
        "vllm.cpu_memory_utilization=0.15",
    ]

    def fresh(name: str) -> Path:
        d = work / name
        d.mkdir()
        shutil.copy(ROOT / "runs/demo/config.toml", d / "config.toml")
        shutil.copy(ROOT / "runs/demo/prompts.jsonl", d / "prompts.jsonl")
        return d

    results = {}
    results["engine"] = one_round(fresh("engine"), [*common, "generate.backend=vllm", "judge.backend=vllm"])
    print("engine", results["engine"], flush=True)
    for n in (1, 2):
        with servers(model, n, work, 2048) as (urls, start):
            eps = json.dumps(urls)
            sets = [*common, "generate.backend=openai", f"generate.endpoints={eps}", "generate.sync=none"]
            sets += ["judge.backend=openai", f"judge.endpoints={eps}"]
            results[f"serve{n}"] = {**one_round(fresh(f"serve{n}"), sets), "server_start_seconds": start}
        print(f"serve{n}", results[f"serve{n}"], flush=True)

    engine = shape(work / "engine/round_1/responses.jsonl")
    for name in ("serve1", "serve2"):
        got = shape(work / name / "round_1/responses.jsonl")
        results[name]["same_schema"] = all(
            {k: type(v) for k, v in a.items()} == {k: type(v) for k, v in b.items()}
            for a, b in zip(got, engine, strict=True)
        ) and len(got) == len(engine)
        results[name]["same_tokens_as_engine"] = sum(
            a["token_ids"] == b["token_ids"] for a, b in zip(got, engine, strict=True)
        ) / len(engine)
        j_got, j_eng = (shape(work / x / "round_1/judgements.jsonl") for x in (name, "engine"))
        results[name]["judgement_keys_equal"] = [sorted(a) for a in j_got] == [sorted(b) for b in j_eng]
    out = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "model": "smollm2-135m-instruct (fp32)",
        "prompts": args.prompts_per_round,
        "samples_per_prompt": 2,
        "max_new_tokens": args.max_new_tokens,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
