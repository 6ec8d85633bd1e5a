"""DPO with LoRA (arXiv:2305.18290; LoRA arXiv:2106.09685), then merge the adapter into the weights.

The reference is the starting model itself: the same weights with the adapter disabled. Its log-probs are
computed once, before the first step, so training runs one model and one forward per micro-batch (chosen
and rejected rows together). With LoRA's B matrices at zero and no dropout, the policy equals the reference
at the first step and the first loss is ln 2.

    rlaif run runs/demo --set train.epochs=1    # trains inside a round; see rounds.py
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from rlaif.progress import SILENT, Progress


@dataclass
class Encoded:
    chosen: list[int]
    chosen_start: int
    rejected: list[int]
    rejected_start: int


def encode_pair(
    tokenizer,
    prompt: str,
    chosen: str,
    rejected: str,
    max_length: int,
    chosen_finished: bool = True,
    rejected_finished: bool = True,
) -> Encoded:
    """Token ids of prompt+response for both responses, and where each response starts.

    A response that ended on its own gets the EOS token, so DPO also learns where to stop; one that was cut
    by the sampling length limit does not (teaching it to stop mid-sentence would be wrong). A prompt that
    leaves no room is cut from the left; a response longer than max_length is cut at the end.
    """
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False).input_ids
    out = []
    for response, finished in ((chosen, chosen_finished), (rejected, rejected_finished)):
        resp = tokenizer(response, add_special_tokens=False).input_ids + (
            [tokenizer.eos_token_id] if finished else []
        )
        resp = resp[: max_length - 1]
        room = max_length - len(resp)
        p = prompt_ids[-room:] if room < len(prompt_ids) else prompt_ids
        out.append((p + resp, len(p)))
    return Encoded(out[0][0], out[0][1], out[1][0], out[1][1])


def collate(batch: list[Encoded], pad_id: int):
    """Rows [chosen_0..chosen_B-1, rejected_0..rejected_B-1], right-padded; mask marks response tokens.

    Right padding keeps every real token's logits identical to an unpadded forward (causal attention), so
    reference and policy log-probs computed in different batches still match exactly."""
    import torch

    rows = [(e.chosen, e.chosen_start) for e in batch] + [(e.rejected, e.rejected_start) for e in batch]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (seq, start) in enumerate(rows):
        ids[r, : len(seq)] = torch.tensor(seq)
        attn[r, : len(seq)] = 1
        loss_mask[r, start : len(seq)] = 1
    return ids, attn, loss_mask


def batch_logps(model, batch: list[Encoded], pad_id: int, device):
    """(chosen, rejected) sequence log-probs for a micro-batch, in one forward pass."""
    from rlaif.losses import sequence_logps

    ids, attn, mask = (t.to(device) for t in collate(batch, pad_id))
    logits = model(input_ids=ids, attention_mask=attn).logits
    logps = sequence_logps(logits, ids, mask)
    return logps[: len(batch)], logps[len(batch) :]


def lr_at(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then linear decay to 0 at `total` (a multiplier)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def train_dpo(
    model,
    tokenizer,
    pairs: list[dict],
    config,
    seed: int,
    out_dir: Path,
    progress: Progress = SILENT,
):
    """Train a LoRA adapter with DPO on `pairs` ({"prompt", "chosen", "rejected"}).

    Returns (merged_model, metrics, log) where log has one record per optimizer step. The adapter is saved
    to out_dir/"adapter"; the caller saves the merged model.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from rlaif.losses import dpo_sigmoid_loss

    torch.manual_seed(seed)
    rng = random.Random(seed)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    data = [
        encode_pair(
            tokenizer,
            p["prompt"],
            p["chosen"],
            p["rejected"],
            config.max_length,
            p.get("chosen_finished", True),
            p.get("rejected_finished", True),
        )
        for p in pairs
    ]

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)

    # Reference log-probs, once: the same network with the adapter switched off.
    progress.stage("reference log-probs", len(data))
    model.eval()
    ref_c, ref_r = torch.zeros(len(data)), torch.zeros(len(data))
    with torch.inference_mode(), model.disable_adapter():
        for s in range(0, len(data), config.batch_size):
            c, r = batch_logps(model, data[s : s + config.batch_size], pad_id, device)
            ref_c[s : s + len(c)], ref_r[s : s + len(r)] = c.float().cpu(), r.float().cpu()
            progress.advance(len(c))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    per_step = config.batch_size * config.grad_accum
    steps_per_epoch = math.ceil(len(data) / per_step)
    total = steps_per_epoch * config.epochs
    warmup = int(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, total, warmup))

    model.train()
    log, step = [], 0
    progress.stage("train", total)
    for epoch in range(config.epochs):
        order = list(range(len(data)))
        rng.shuffle(order)
        for s in range(0, len(order), per_step):
            chunk = order[s : s + per_step]
            stats = {"loss": 0.0, "acc": 0.0, "margin": 0.0, "chosen_logp": 0.0, "rejected_logp": 0.0}
            for m in range(0, len(chunk), config.batch_size):
                idx = chunk[m : m + config.batch_size]
                pc, pr = batch_logps(model, [data[i] for i in idx], pad_id, device)
                loss, rc, rr = dpo_sigmoid_loss(
                    pc, pr, ref_c[idx].to(device), ref_r[idx].to(device), config.beta
                )
                # weight each micro-batch by its share of the step so uneven tails average correctly
                (loss.sum() / len(chunk)).backward()
                stats["loss"] += loss.detach().sum().item()
                stats["acc"] += (rc > rr).float().sum().item()
                stats["margin"] += (rc - rr).sum().item()
                stats["chosen_logp"] += pc.detach().sum().item()
                stats["rejected_logp"] += pr.detach().sum().item()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm).item()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            record = {k: v / len(chunk) for k, v in stats.items()}
            record.update(
                step=step, epoch=epoch, pairs=len(chunk), lr=scheduler.get_last_lr()[0], grad_norm=grad_norm
            )
            log.append(record)
            step += 1
            progress.advance(1)

    last_epoch = [r for r in log if r["epoch"] == config.epochs - 1]
    seen = sum(r["pairs"] for r in last_epoch)
    metrics = {
        "steps": step,
        "pairs": len(data),
        "loss_first": log[0]["loss"],
        "loss_last": log[-1]["loss"],
        # over the last epoch, weighted by pairs: the share of pairs whose chosen reward beats the rejected
        "reward_accuracy": sum(r["acc"] * r["pairs"] for r in last_epoch) / seen,
        "reward_margin": sum(r["margin"] * r["pairs"] for r in last_epoch) / seen,
    }
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir / "adapter")
    merged = model.merge_and_unload()
    merged.eval()
    return merged, metrics, log
