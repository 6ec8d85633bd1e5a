"""The GPU figures a user would compare, in one script: on the embedded model and on randomly initialised models
shaped like Llama 1B and 7B (no weights needed for throughput), each of this project's benchmarks against its
counterpart, with peak memory, ratios in one JSON.

- generation: vLLM against transformers, the same prompts and sampling (bench/generation.py; goal: vLLM at least
  5x; random models rarely emit EOS, so their samples run to the length limit);
- a DPO LoRA training against TRL's DPOTrainer (bench/train.py);
- an RLOO round against TRL's RLOOTrainer (bench/rl.py);
- reward-model training against TRL's RewardTrainer (bench/reward.py);

goal: at least 1.3x TRL on each training figure. Each piece runs in its own processes, within a time budget (a
piece that would start after it is recorded as skipped), so the whole stays under 8 minutes on one GPU.
`--size tiny` runs everything on the CPU at toy sizes (a test does, so a GPU run does not fail on a typo).

    python bench/gpu.py --out bench/results/gpu.json            # on a GPU machine
    python bench/gpu.py --size tiny --out /tmp/gpu-tiny.json     # anywhere
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {
    # hidden, layers, heads, kv heads, MLP: Llama 3.2 1B and Llama 2 7B; the vocabulary is the embedded model's
    "llama-1b": dict(
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
    ),
    "llama-7b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=11008,
    ),
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128,
    ),
}

SIZES = {
    # per model: generation prompts x samples x tokens; DPO / RM pairs and length; RLOO prompts x k x tokens
    "full": dict(
        gen=["--limit", "48", "--n", "4", "--max-new-tokens", "128"],
        pairs="64",
        length="512",
        rl=["--prompts", "16", "--k", "4", "--max-new-tokens", "64"],
        data=[],  # the HH pairs in ../shared/data, each script's default
    ),
    "tiny": dict(
        gen=["--limit", "2", "--n", "2", "--max-new-tokens", "8", "--enforce-eager"],
        pairs="4",
        length="128",
        rl=["--prompts", "2", "--k", "2", "--max-new-tokens", "8"],
        # a smoke run needs no evaluation data: the demo's written pairs, shipped in the repository
        data=["--data", str(ROOT / "runs" / "demo" / "helpful-pairs.jsonl")],
    ),
}


def random_model(shape: str, out: Path, dtype: str) -> str:
    """A randomly initialised Llama of the given shape with the embedded model's tokenizer, saved to `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlaif.models import load_tokenizer, resolve_model

    if (out / "config.json").is_file():
        return str(out)
    tok = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    config = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=4096,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=False,
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


def run_piece(script: str, args: list[str], out: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args, "--out", str(out)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not out.is_file():
        return {"error": proc.stderr[-3000:], "seconds": time.perf_counter() - t0}
    return {**json.loads(out.read_text()), "seconds": time.perf_counter() - t0}


def ratios(piece: str, r: dict) -> dict:
    """The headline ratio of each piece (ours / theirs, higher is better)."""
    if "error" in r or "skipped" in r:
        return {}
    if piece == "generation":
        ratio = r.get("ratio_vllm_over_transformers")
        return {"vllm_over_transformers": ratio.get("tokens_per_s") if isinstance(ratio, dict) else ratio}
    if piece == "dpo":
        return {"dpo_over_trl": r["tokens_per_s_ratio"]}
    if piece == "rloo":
        return {"rloo_over_trl": r.get("loop_speedup")}
    if piece == "reward":
        return {"reward_over_trl": r.get("tokens_per_s_ratio") or r.get("lora_tokens_per_s_ratio")}
    return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument(
        "--models", default="", help="comma-separated: embedded, llama-1b, llama-7b (default by size)"
    )
    ap.add_argument(
        "--budget-s", type=float, default=480, help="pieces that would start after this are skipped"
    )
    ap.add_argument("--work", default="/tmp/rlaif-bench-gpu")
    ap.add_argument("--out", default="bench/results/gpu.json")
    args = ap.parse_args()
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    dtype = "bfloat16" if gpu else "float32"
    size = SIZES[args.size]
    data = size["data"]
    names = (
        args.models.split(",")
        if args.models
        else (["tiny"] if args.size == "tiny" else ["embedded", "llama-1b", "llama-7b"])
    )
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = {"gpu": gpu, "size": args.size, "torch": torch.__version__, "models": {}, "ratios": {}}
    for name in names:
        model = "smollm2-135m-instruct" if name == "embedded" else random_model(name, work / name, dtype)
        pieces = {
            "generation": ("generation.py", ["--model", model, *size["gen"]]),
            "dpo": (
                "train.py",
                ["--model", model, "--pairs", size["pairs"], "--max-length", size["length"], *data],
            ),
            "rloo": ("rl.py", ["--model", model, *size["rl"]]),
            "reward": (
                "reward.py",
                [
                    "--model",
                    model,
                    "--pairs",
                    size["pairs"],
                    "--max-length",
                    size["length"],
                    "--dev",
                    size["pairs"],
                    *data,
                    *(["--dev-data", data[1]] if data else []),
                ],
            ),
        }
        got = {}
        for piece, (script, piece_args) in pieces.items():
            if time.perf_counter() - t0 > args.budget_s:
                got[piece] = {"skipped": f"past the {args.budget_s:.0f} s budget"}
                continue
            got[piece] = run_piece(script, piece_args, work / f"{name}-{piece}.json")
            print(
                name,
                piece,
                json.dumps(ratios(piece, got[piece]) or {"keys": sorted(got[piece])[:6]}),
                flush=True,
            )
        result["models"][name] = got
        result["ratios"][name] = {k: v for piece in pieces for k, v in ratios(piece, got[piece]).items()}
    result["seconds"] = time.perf_counter() - t0
    result["goals"] = {"training_over_trl": 1.3, "vllm_over_transformers": 5.0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["ratios"]))


if __name__ == "__main__":
    main()
