"""DPO-family training with LoRA (DPO arXiv:2305.18290; LoRA arXiv:2106.09685), then merge the adapter.

Losses: sigmoid (DPO), ipo, robust, hinge, optionally length-normalised and with an NLL term on the chosen
response (rlaif/losses.py). The reference is, by default, the starting model itself: the same weights with the
adapter disabled, its log-probs computed once before the first step, so training runs one model and one
forward per micro-batch (chosen and rejected rows together). With LoRA's B matrices at zero and no dropout,
the policy equals the reference at the first step (DPO's first loss is ln 2). Other references:

- `train.reference = "initial"`: the run's first model; its log-probs come from loading it once, then it is freed.
- TR-DPO (arXiv:2404.09656), `train.tr_dpo_tau = k`: every k steps ref <- alpha * policy + (1 - alpha) * ref.
  With LoRA both are adapters over the same frozen base, so the reference is a second adapter of rank 2r; the
  update mixes the two low-rank weight deltas exactly and truncates to rank 2r by SVD (exact when the mix
  has rank <= 2r, always so for alpha = 1). Its log-probs are then recomputed at every step.

Micro-batches hold pairs of similar length (length bucketing), so little compute goes to padding. A checkpoint
(adapter, optimizer, scheduler, step) is written atomically every `checkpoint_every` steps; a killed training
resumes from it mid-round.

    rlaif run runs/demo --set train.loss=ipo    # trains inside a round; see rounds.py
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
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
    prompt,
    chosen: str,
    rejected: str,
    max_length: int,
    chosen_finished: bool = True,
    rejected_finished: bool = True,
) -> Encoded:
    """Token ids of prompt+response for both responses, and where each response starts.

    A response that ended on its own gets the EOS token, so DPO also learns where to stop; one that was cut
    by the sampling length limit does not (teaching it to stop mid-sentence would be wrong). A prompt that
    leaves no room is cut from the left; a response longer than max_length is cut at the end. `prompt` is a
    user message, or a list of chat messages (a multi-turn conversation before the response).
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
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


def batch_logps(model, batch: list[Encoded], pad_id: int, device, with_counts: bool = False):
    """(chosen, rejected) sequence log-probs for a micro-batch, in one forward pass; with `with_counts` also
    the response token counts (chosen, rejected)."""
    from rlaif.losses import sequence_logps

    ids, attn, mask = (t.to(device) for t in collate(batch, pad_id))
    # logits only from the first response position on: the prompt's logits are never read
    start = min(min(e.chosen_start, e.rejected_start) for e in batch)
    logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=ids.shape[1] - start + 1).logits
    keep = logits.shape[1]
    logps = sequence_logps(logits, ids[:, -keep:], mask[:, -keep:])
    if not with_counts:
        return logps[: len(batch)], logps[len(batch) :]
    counts = mask[:, 1:].sum(-1)
    return logps[: len(batch)], logps[len(batch) :], counts[: len(batch)], counts[len(batch) :]


def lr_at(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then linear decay to 0 at `total` (a multiplier)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def bucketed_steps(lengths: list[int], per_step: int, rng: random.Random, window: int = 8) -> list[list[int]]:
    """One epoch's optimizer steps as lists of example indices: shuffled, then sorted by length inside windows
    of `window` steps, so a step holds pairs of similar length (less padding) while the epoch stays random.
    Every index appears exactly once."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    steps = []
    span = per_step * window
    for w in range(0, len(order), span):
        chunk = sorted(order[w : w + span], key=lambda i: lengths[i])
        steps.extend(chunk[s : s + per_step] for s in range(0, len(chunk), per_step))
    rng.shuffle(steps)
    return steps


def _lora_pairs(model):
    """(module, A_policy, B_policy, A_ref, B_ref) for every LoRA layer holding both adapters."""
    for module in model.modules():
        a, b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if a is not None and "default" in a and "ref" in a:
            yield a["default"].weight, b["default"].weight, a["ref"].weight, b["ref"].weight


def tr_dpo_update(model, alpha: float) -> None:
    """Reference adapter <- alpha * policy + (1 - alpha) * reference, on the weight deltas B @ A.

    The mix [alpha Bp | (1 - alpha) Br] @ [Ap ; Ar] has rank <= r + 2r; it is truncated to the reference's rank
    2r through QR + SVD of the small core (exact whenever the mix has rank <= 2r)."""
    import torch

    with torch.no_grad():
        for ap, bp, ar, br in _lora_pairs(model):
            rank = ar.shape[0]
            left = torch.cat([alpha * bp.float(), (1 - alpha) * br.float()], dim=1)  # (out, 3r)
            right = torch.cat([ap.float(), ar.float()], dim=0)  # (3r, in)
            qu, ru = torch.linalg.qr(left)
            qv, rv = torch.linalg.qr(right.T)
            x, sv, yt = torch.linalg.svd(ru @ rv.T)
            root = sv[:rank].sqrt()
            br.copy_((qu @ x[:, :rank] * root).to(br.dtype))
            ar.copy_((root[:, None] * (yt[:rank] @ qv.T)).to(ar.dtype))


def _fingerprint(data: list[Encoded], config) -> str:
    h = hashlib.sha256()
    for e in data:
        h.update(json.dumps([e.chosen, e.chosen_start, e.rejected, e.rejected_start]).encode())
    h.update(json.dumps(sorted(vars(config).items()), default=str).encode())
    return h.hexdigest()[:16]


def _save_checkpoint(model, optimizer, scheduler, step: int, log: list, fingerprint: str, path: Path) -> None:
    """Adapter(s) as safetensors, optimizer and scheduler state (tensors and numbers only), the step log;
    written to a temp folder and renamed, so a kill leaves the previous checkpoint whole."""
    import torch
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lora = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if "lora_" in n}
    save_file(lora, str(tmp / "lora.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "state.pt")
    (tmp / "progress.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint, "log": log}))
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(model, optimizer, scheduler, fingerprint: str, path: Path):
    """(step, log) from a checkpoint of this same training, or None. Loads tensors only (no pickle code)."""
    import torch
    from safetensors.torch import load_file

    if not (path / "progress.json").is_file():
        return None
    progress = json.loads((path / "progress.json").read_text())
    if progress.get("fingerprint") != fingerprint:
        return None  # other pairs or settings: start over rather than mix two trainings
    lora = load_file(str(path / "lora.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in lora.items():
            params[n].copy_(t)
    state = torch.load(path / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return progress["step"], progress["log"]


def distributed():
    """(torch.distributed, rank, world size) when a process group is running (torchrun, `accelerate launch`),
    else (None, 0, 1)."""
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        return td, td.get_rank(), td.get_world_size()
    return None, 0, 1


def train_dpo(
    model,
    tokenizer,
    pairs: list[dict],
    config,
    seed: int,
    out_dir: Path,
    progress: Progress = SILENT,
    ref_model=None,
):
    """Train a LoRA adapter on `pairs` ({"prompt", "chosen", "rejected"}) with `config.loss`.

    `ref_model`, when given, supplies the reference log-probs instead of the adapter-disabled policy. Returns
    (merged_model, metrics, log) where log has one record per optimizer step. The adapter is saved to
    out_dir/"adapter"; the caller saves the merged model. Checkpoints go to out_dir/"checkpoint"."""
    import torch
    from peft import LoraConfig, get_peft_model

    from rlaif.losses import nll_term, preference_loss

    torch.manual_seed(seed)
    device = next(model.parameters()).device
    dist, rank, world = distributed()
    pad_id = tokenizer.pad_token_id
    out_dir = Path(out_dir)
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
    tr_dpo = config.tr_dpo_tau > 0
    if tr_dpo:
        # the moving reference: a second adapter, rank 2r with the same scale, zero at the start (= the base)
        ref_lora = LoraConfig(
            r=2 * config.lora_r,
            lora_alpha=2 * config.lora_alpha,
            lora_dropout=0.0,
            target_modules=list(config.lora_target),
            task_type="CAUSAL_LM",
        )
        model.add_adapter("ref", ref_lora)
        model.set_adapter("default")

    def logps(net, batch):
        c, r, nc, nr = batch_logps(net, batch, pad_id, device, with_counts=True)
        if config.length_norm:
            return c / nc.clamp(min=1), r / nr.clamp(min=1), c, nc
        return c, r, c, nc

    # Reference log-probs, once (a fixed reference): the same network with the adapter switched off, or the
    # given reference model.
    ref_c, ref_r = torch.zeros(len(data)), torch.zeros(len(data))
    if not tr_dpo:
        progress.stage("reference log-probs", len(data))
        model.eval()
        ref_net = ref_model if ref_model is not None else model
        with torch.inference_mode():
            for s in range(0, len(data), config.batch_size):
                batch = data[s : s + config.batch_size]
                if ref_model is not None:
                    c, r, _, _ = logps(ref_net, batch)
                else:
                    with model.disable_adapter():
                        c, r, _, _ = logps(ref_net, batch)
                ref_c[s : s + len(c)], ref_r[s : s + len(r)] = c.float().cpu(), r.float().cpu()
                progress.advance(len(c))

    params = [p for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    per_step = config.batch_size * config.grad_accum
    steps_per_epoch = math.ceil(len(data) / per_step)
    total = steps_per_epoch * config.epochs
    warmup = int(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, total, warmup))

    lengths = [max(len(e.chosen), len(e.rejected)) for e in data]
    # each epoch's order depends only on (seed, epoch): a resumed training replays the same steps
    plan = []
    for epoch in range(config.epochs):
        rng = random.Random(f"{seed}:{epoch}")
        if config.bucket:
            plan.extend((epoch, chunk) for chunk in bucketed_steps(lengths, per_step, rng))
        else:
            order = list(range(len(data)))
            rng.shuffle(order)
            plan.extend((epoch, order[s : s + per_step]) for s in range(0, len(order), per_step))

    ckpt = out_dir / "checkpoint"
    fingerprint = _fingerprint(data, config)
    log, start = [], 0
    resumed = (
        _load_checkpoint(model, optimizer, scheduler, fingerprint, ckpt) if config.checkpoint_every else None
    )
    if resumed is not None:
        start, log = resumed
        progress.note(f"resuming training at step {start} of {total} from {ckpt}")

    model.train()
    progress.stage("train", total)
    progress.advance(start)
    for step in range(start, total):
        epoch, chunk = plan[step]
        stats = dict.fromkeys(
            (
                "loss",
                "acc",
                "margin",
                "chosen_logp",
                "rejected_logp",
                "ref_chosen_logp",
                "ref_rejected_logp",
                "nll",
            ),
            0.0,
        )
        mine = chunk[rank::world]  # data parallel: this process's share of the step (all of it alone)
        for m in range(0, len(mine), config.batch_size):
            idx = mine[m : m + config.batch_size]
            batch = [data[i] for i in idx]
            if tr_dpo:
                model.set_adapter("ref")
                with torch.no_grad():
                    rc_, rr_, _, _ = logps(model, batch)
                model.set_adapter("default")
            else:
                rc_, rr_ = ref_c[idx].to(device), ref_r[idx].to(device)
            pc, pr, pc_sum, nc = logps(model, batch)
            loss, rc, rr = preference_loss(config.loss, pc, pr, rc_, rr_, config.beta, config.label_noise)
            nll = nll_term(pc_sum, nc)
            total_loss = loss + config.nll_weight * nll if config.nll_weight else loss
            # weight each micro-batch by its share of the step so uneven tails average correctly
            (total_loss.sum() / len(chunk)).backward()
            stats["loss"] += total_loss.detach().sum().item()
            stats["nll"] += nll.detach().sum().item()
            stats["acc"] += (rc > rr).float().sum().item()
            stats["margin"] += (rc - rr).sum().item()
            stats["chosen_logp"] += pc.detach().sum().item()
            stats["rejected_logp"] += pr.detach().sum().item()
            stats["ref_chosen_logp"] += rc_.sum().item()
            stats["ref_rejected_logp"] += rr_.sum().item()
        if dist is not None:
            # each process's loss is already scaled by the whole step's size: summing gradients and step
            # figures over processes gives exactly the single-process values (a process without rows adds 0)
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
            figures = torch.tensor(list(stats.values()), dtype=torch.float64)
            dist.all_reduce(figures)
            stats = dict(zip(stats, figures.tolist(), strict=True))
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm).item()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if tr_dpo and (step + 1) % config.tr_dpo_tau == 0:
            tr_dpo_update(model, config.tr_dpo_alpha)
        record = {k: v / len(chunk) for k, v in stats.items()}
        record.update(
            step=step, epoch=epoch, pairs=len(chunk), lr=scheduler.get_last_lr()[0], grad_norm=grad_norm
        )
        log.append(record)
        progress.advance(1)
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < total:
            if rank == 0:
                _save_checkpoint(model, optimizer, scheduler, step + 1, log, fingerprint, ckpt)
            if dist is not None:
                dist.barrier()

    last_epoch = [r for r in log if r["epoch"] == config.epochs - 1]
    seen = sum(r["pairs"] for r in last_epoch)
    metrics = {
        "steps": len(log),
        "pairs": len(data),
        "loss": config.loss,
        "loss_first": log[0]["loss"],
        "loss_last": log[-1]["loss"],
        # over the last epoch, weighted by pairs: the share of pairs whose chosen reward beats the rejected
        "reward_accuracy": sum(r["acc"] * r["pairs"] for r in last_epoch) / seen,
        "reward_margin": sum(r["margin"] * r["pairs"] for r in last_epoch) / seen,
        "chosen_logp_first": log[0]["chosen_logp"],
        "chosen_logp_last": log[-1]["chosen_logp"],
        "resumed_at_step": start,
        "padding_share": _padding_share(data, plan, config.batch_size),
    }
    if tr_dpo:
        model.delete_adapter("ref")
        model.set_adapter("default")
    if rank == 0:
        model.save_pretrained(out_dir / "adapter")
    merged = model.merge_and_unload()
    merged.eval()
    if rank == 0:
        shutil.rmtree(ckpt, ignore_errors=True)  # the finished adapter supersedes it
    if dist is not None:
        dist.barrier()
    return merged, metrics, log


def _padding_share(data: list[Encoded], plan, batch_size: int) -> float:
    """Share of the token slots in the training forwards that were padding."""
    real = padded = 0
    for _, chunk in plan:
        for m in range(0, len(chunk), batch_size):
            rows = [len(data[i].chosen) for i in chunk[m : m + batch_size]] + [
                len(data[i].rejected) for i in chunk[m : m + batch_size]
            ]
            real += sum(rows)
            padded += max(rows) * len(rows)
    return 1 - real / padded if padded else 0.0
