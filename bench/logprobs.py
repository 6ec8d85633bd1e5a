"""What applying the LM head at the response tokens alone (rlaif/logprobs.py) saves: one DPO micro-batch's
log-probs, forward and backward, on the embedded model with LoRA, the head at the response tokens ("response")
against the model's forward with logits from the first response token on ("forward"), each in its own process;
`--stage rl`: the RL stage's per-token log-probs of the pairs' chosen answers as rollouts (its forward computed
logits at every position).
Reported per side: peak memory above the loaded model (CPU: the process's peak resident memory, VmHWM, reset
before the step; GPU: torch's peak allocation), seconds, the log-probs (the two must agree), and the logit rows
each computes. JSON output.

    python bench/logprobs.py --pairs 4 --out bench/results/logprobs.json
    python bench/logprobs.py --pairs 8 --stage rl --out bench/results/logprobs-rl.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import TARGET, device, dtype, report, two_sided  # noqa: E402
from recompute import peak_kb  # noqa: E402

SIDES = ("forward", "response")


def run_side(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from rlaif import logprobs
    from rlaif.config import DPOConfig
    from rlaif.data import load_preferences
    from rlaif.models import load_model, load_tokenizer, resolve_model
    from rlaif.stages.dpo import PreferenceTask, batch_logps, collate
    from rlaif.stages.rl import response_logps as rl_logps

    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    tok = load_tokenizer(path)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=list(TARGET), task_type="CAUSAL_LM")
    model = get_peft_model(load_model(path, device(), dtype()), lora)
    task = PreferenceTask(tok, DPOConfig(max_length=args.max_length))
    data = [task.encode(p) for p in load_preferences(args.data)[: args.pairs]]
    ids, attn, mask = collate(data, tok.pad_token_id)
    start = min(min(e.chosen_start, e.rejected_start) for e in data)
    if args.only == "forward":
        model.__dict__[logprobs.CHECKED] = False
    else:
        assert logprobs.head_alone(model, ids.to(device()), attn.to(device()), start)
    model.train()
    on_gpu = device() == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS now
        base = peak_kb() * 1024
    t = time.perf_counter()
    if args.stage == "dpo":
        c, r = batch_logps(model, data, tok.pad_token_id, device())
        logps = torch.cat([c, r])
        rows = (
            int(mask[:, 1:].sum()) if args.only == "response" else ids.shape[0] * (ids.shape[1] - start + 1)
        )
    else:  # the RL stage's per-token log-probs of each pair's chosen answer as a rollout (its forward: every position)
        rollouts = [(e.chosen, e.chosen_start) for e in data]
        logps = torch.stack([lp.sum() for lp in rl_logps(model, rollouts, tok.pad_token_id)])
        width = max(len(seq) for seq, _ in rollouts)
        rows = sum(len(s) - b for s, b in rollouts) if args.only == "response" else len(rollouts) * width
    logps.sum().backward()
    seconds = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() if on_gpu else peak_kb() * 1024
    return {
        "peak_mb": (peak - base) / 2**20,
        "seconds": seconds,
        "logit_rows": rows,
        "logps": [float(x) for x in logps],
    }


def main() -> None:
    parsed = two_sided(
        __doc__,
        SIDES,
        4,
        "bench/results/logprobs.json",
        run_side,
        lambda ap: ap.add_argument("--stage", choices=["dpo", "rl"], default="dpo"),
    )
    if parsed is None:
        return
    args, sides = parsed
    fwd, resp = sides["forward"], sides["response"]
    result = {
        "settings": vars(args),
        **sides,
        "memory_ratio": resp["peak_mb"] / fwd["peak_mb"],
        "time_ratio": resp["seconds"] / fwd["seconds"],
        "logit_rows_ratio": resp["logit_rows"] / fwd["logit_rows"],
        "max_logp_difference": max(abs(a - b) for a, b in zip(fwd["logps"], resp["logps"], strict=True)),
    }
    report(args.out, result, ("memory_ratio", "time_ratio", "logit_rows_ratio", "max_logp_difference"))


if __name__ == "__main__":
    main()
