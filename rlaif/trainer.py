"""The one training loop every training stage runs on: LoRA, AdamW with linear warm-up and decay, a seeded
step plan with length bucketing, gradient accumulation, data-parallel reduction, clipping, resumable
checkpoints, the step log, and the merge of the adapter into the weights.

A training stage provides a `Task`: how to encode one example, what to do once before the first step (the
DPO stage computes its reference log-probs there), and the per-example loss of a micro-batch with the figures
it wants logged. Everything else is here, so each stage's training behaves the same: the same plan for the
same seed, the same checkpoints, the same resume.

A checkpoint (adapter, optimizer, scheduler, step, log) is written atomically every `checkpoint_every` steps;
a killed training resumes from it. The finished adapter is written with a record of the training
(`adapter/training.json`), so a training killed after it finished is not run again.

    rlaif run runs/demo             # the dpo stage (rlaif/stages/dpo.py) trains on this loop
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import warnings
from pathlib import Path
from typing import Protocol

from rlaif import recompute
from rlaif.config.loop import LoopConfig
from rlaif.config.privacy import PrivacyConfig
from rlaif.data import DataError, clear, fresh_dir, replace_dir
from rlaif.generate.hf import chat_prompt
from rlaif.privacy import Ledger, PerSampleGrads, clip_units, describe, gaussian_noise, poisson_plan, units_of
from rlaif.privacy import plan as privacy_plan
from rlaif.privacy import record as record_training
from rlaif.progress import SILENT, Progress
from rlaif.sharding import full, gathered_trainable, is_sharded, load_sharded, save_sharded, shard_mode
from rlaif.sharding import shard as shard_model


class TrainingDiverged(RuntimeError):
    """The loss, a gradient or a weight became inf or nan: the training stops before anything of it is kept."""


class Task(Protocol):
    """What a training stage gives the loop."""

    count_key: str
    """What the step log calls one example ("pairs" for preference training)."""
    stat_keys: tuple[str, ...]
    """Per-example figures `loss` returns summed over a micro-batch; the log holds their step means."""
    diverge_keys: str
    """The config keys to change when the training diverges (named in the message)."""
    modules_to_save: list[str] | None
    """Modules trained whole beside the LoRA adapter and saved with it (a reward head); None for none."""

    def attach(self, model) -> None:
        """Before LoRA wraps the model (e.g. add a head the adapter then trains and saves)."""
        ...

    def encode(self, example: dict): ...

    def rows(self, encoded) -> list[int]:
        """The token lengths of the sequences one encoded example puts through the model."""
        ...

    def setup(self, model) -> None:
        """After LoRA wraps the model (e.g. a second adapter)."""
        ...

    def prepare(self, model, data: list, progress: Progress) -> None:
        """Once, before the first step (e.g. fixed reference log-probs)."""
        ...

    def loss(self, model, data: list, idx: list[int]):
        """(per-example loss, {stat: sum over the micro-batch}) for the examples `idx` of `data`."""
        ...

    def after_step(self, model, step: int) -> None: ...

    def finish(self, model) -> None:
        """Before the adapter is saved (e.g. drop a helper adapter)."""
        ...

    def summary(self, log: list[dict], epochs: int) -> dict:
        """The stage's own figures from the step log."""
        ...


def encode_response(
    tokenizer, prompt, response: str, max_length: int, finished: bool = True, prompt_ids=None
) -> tuple[list[int], int, list[int]]:
    """(token ids of prompt + response, where the response starts, the prompt's ids) as every training stage
    encodes one answer: the chat template's prompt (a user message, or chat messages before the reply), then the
    response's tokens, then the EOS token when the response ended on its own (teaching a response cut by a
    length limit to stop there would be wrong). A response longer than max_length is cut at the end; a prompt
    that leaves no room is cut from the left. `prompt_ids` reuses an earlier call's prompt encoding."""

    if prompt_ids is None:
        prompt_ids = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False).input_ids
    resp = tokenizer(response, add_special_tokens=False).input_ids + (
        [tokenizer.eos_token_id] if finished else []
    )
    resp = resp[: max_length - 1]
    room = max_length - len(resp)
    p = prompt_ids[-room:] if room < len(prompt_ids) else prompt_ids
    return p + resp, len(p), prompt_ids


def lr_at(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then linear decay to 0 at `total` (a multiplier)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def bucketed_steps(lengths: list[int], per_step: int, rng: random.Random, window: int = 8) -> list[list[int]]:
    """One epoch's optimizer steps as lists of example indices: shuffled, then sorted by length inside windows
    of `window` steps, so a step holds examples of similar length (less padding) while the epoch stays random.
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


def step_plan(
    lengths: list[int], per_step: int, epochs: int, seed: int, bucket: bool
) -> list[tuple[int, list[int]]]:
    """Every optimizer step as (epoch, example indices). Each epoch's order depends only on (seed, epoch), so
    a resumed training replays the same steps."""
    plan = []
    for epoch in range(epochs):
        rng = random.Random(f"{seed}:{epoch}")
        if bucket:
            plan.extend((epoch, chunk) for chunk in bucketed_steps(lengths, per_step, rng))
        else:
            order = list(range(len(lengths)))
            rng.shuffle(order)
            plan.extend((epoch, order[s : s + per_step]) for s in range(0, len(order), per_step))
    return plan


def distributed():
    """(torch.distributed, rank, world size) when a process group is running (torchrun, `accelerate launch`),
    else (None, 0, 1)."""
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        return td, td.get_rank(), td.get_world_size()
    return None, 0, 1


def _fingerprint(data: list, config, privacy=None) -> str:
    """What a checkpoint or finished adapter must match to be resumed: the encoded examples and the settings."""
    h = hashlib.sha256()
    for e in data:
        h.update(json.dumps(e, default=lambda o: vars(o)).encode())
    h.update(json.dumps(sorted(vars(config).items()), default=str).encode())
    if privacy is not None:
        h.update(json.dumps(sorted(vars(privacy).items()), default=str).encode())
    return h.hexdigest()[:16]


def _save_checkpoint(model, optimizer, scheduler, step: int, log: list, fingerprint: str, path: Path) -> None:
    """Adapter(s) as safetensors, optimizer and scheduler state (tensors and numbers only), the step log;
    written to a temp folder and renamed, so a kill leaves the previous checkpoint whole."""
    import torch
    from safetensors.torch import save_file

    tmp = fresh_dir(path.with_name(path.name + ".tmp"))
    # every adapter's weights (TR-DPO's reference adapter is not trained but moves) and any trained module
    lora = {
        recompute.plain_name(n): p.detach().cpu().contiguous()
        for n, p in model.named_parameters()
        if "lora_" in n or p.requires_grad
    }
    save_file(lora, str(tmp / "lora.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "state.pt")
    (tmp / "progress.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint, "log": log}))
    replace_dir(tmp, path)


def _save_checkpoint_sharded(
    model, optimizer, scheduler, step, log, fingerprint, path: Path, rank, dist
) -> None:
    """Each process's shards of the trainable parameters and the optimizer state (torch.distributed.checkpoint),
    the scheduler and the step log by rank 0; written to a temp folder and renamed once all are done."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    if rank == 0:
        fresh_dir(tmp)
    dist.barrier()
    save_sharded(model, optimizer, tmp / "shards")
    dist.barrier()
    if rank == 0:
        torch.save({"scheduler": scheduler.state_dict()}, tmp / "state.pt")
        (tmp / "progress.json").write_text(
            json.dumps(
                {"step": step, "log": log, "fingerprint": fingerprint, "sharded": dist.get_world_size()}
            )
        )
        replace_dir(tmp, path)


def _load_checkpoint(model, optimizer, scheduler, fingerprint: str, path: Path, sharded: bool = False):
    """(step, log) from a checkpoint of this same training, or None. Loads tensors only (no pickle code)."""
    import torch
    from safetensors.torch import load_file

    if not (path / "progress.json").is_file():
        return None
    try:
        progress = json.loads((path / "progress.json").read_text())
        if progress.get("fingerprint") != fingerprint:
            return None  # other examples or settings: start over rather than mix two trainings
        if sharded or progress.get("sharded"):
            import torch.distributed as td

            world = td.get_world_size() if td.is_initialized() else 1
            if not sharded or progress.get("sharded") != world:
                raise DataError(
                    f"{path}: a sharded checkpoint of {progress.get('sharded')} processes; resume it with "
                    f"launch.shard = fsdp on as many processes, or delete the folder to start over"
                )
            load_sharded(model, optimizer, path / "shards")
            scheduler.load_state_dict(torch.load(path / "state.pt", weights_only=True)["scheduler"])
            return progress["step"], progress["log"]
        lora = load_file(str(path / "lora.safetensors"))
        params = {recompute.plain_name(n): p for n, p in model.named_parameters()}
        with torch.no_grad():
            for n, t in lora.items():
                params[n].copy_(t)
        state = torch.load(path / "state.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return progress["step"], progress["log"]
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to read it means the same thing to the user
        # torch's own message for a pickle it refuses suggests weights_only=False, which would run whatever
        # code the file holds: never pass it on
        raise DataError(
            f"{path}: damaged or not a checkpoint rlaif wrote (it cannot be read: {type(e).__name__}); "
            f"delete that folder (rm -r {path}) and run again: training starts over from its first step"
        ) from None


def _save_adapter(model, record: dict, path: Path, gathered: dict | None = None) -> None:
    """The finished adapter and the record of its training, renamed into place together. A sharded model's
    adapter comes `gathered` (whole tensors by parameter name) and is written in PEFT's layout."""
    from safetensors.torch import save_file

    tmp = fresh_dir(path.with_name(path.name + ".tmp"))
    if gathered is None:
        model.save_pretrained(tmp)
    else:
        model.peft_config["default"].save_pretrained(tmp)
        weights = {_peft_key(n): t.contiguous() for n, t in gathered.items() if ".default." in n}
        save_file(weights, str(tmp / "adapter_model.safetensors"))
    (tmp / "training.json").write_text(json.dumps(record))
    replace_dir(tmp, path)


def _peft_key(name: str) -> str:
    """A parameter's name as PEFT saves it: no adapter name, a trained copy (modules_to_save) under its module."""
    return name.replace(".modules_to_save.default.", ".").replace(".default", "")


def _finished(model, fingerprint: str, path: Path):
    """The record of a finished training of these same examples and settings, its adapter loaded into
    `model`; or None."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    record_path = path / "training.json"
    if not record_path.is_file() or not (path / "adapter_model.safetensors").is_file():
        return None
    record = json.loads(record_path.read_text())
    if record.get("fingerprint") != fingerprint:
        return None
    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    return record


def train(
    model,
    task: Task,
    examples: list[dict],
    config: LoopConfig,
    seed: int,
    out_dir,
    progress: Progress = SILENT,
    privacy: PrivacyConfig | None = None,
    ledger: Ledger | None = None,
):
    """Train a LoRA adapter on `examples` with the task's loss; returns (peft model, metrics, log) with one log
    record per optimizer step. The adapter is saved to out_dir/adapter, checkpoints to out_dir/checkpoint;
    `merge` folds the adapter into the weights."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    dist, rank, world = distributed()
    out_dir = Path(out_dir)
    data = [task.encode(e) for e in examples]
    dp = privacy is not None and privacy.active
    task.private = dp  # a task drops what would mix examples across units (KTO's z0)
    sharded = dist is not None and shard_mode() == "fsdp"
    if sharded and (dp or getattr(task, "moving_ref", False)):
        raise DataError(
            "launch.shard = fsdp trains the dpo losses (KTO too), sft, rl and the LoRA reward model; it does not "
            "compose yet with differential privacy or a moving reference (TR-DPO / TR-KTO): use launch.shard = "
            "none (replicated) for those"
        )

    task.attach(model)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target),
        task_type="CAUSAL_LM",
        modules_to_save=task.modules_to_save,
    )
    model = get_peft_model(model, lora)
    task.setup(model)
    fingerprint = _fingerprint(data, config, privacy if dp else None)
    done = _finished(model, fingerprint, out_dir / "adapter")
    if done is not None:  # killed after training finished: the adapter is the result
        progress.note(f"training already finished: using {out_dir / 'adapter'}")
        task.finish(model)
        return model, done["metrics"], done["log"]

    if recompute.requested():  # activation checkpointing: each decoder layer recomputed in the backward pass
        progress.note(
            f"activation checkpointing: {recompute.wrap(model)} layers recompute in the backward pass"
        )
    if sharded:  # FSDP2: every parameter sharded over the processes (rlaif/sharding.py)
        shard_model(model, str(next(model.parameters()).device))
        progress.note(f"sharded over {world} processes (FSDP2)")
    task.prepare(model, data, progress)
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    per_step = config.batch_size * config.grad_accum
    lengths = [max(task.rows(e)) for e in data]
    if dp:  # DP-SGD: Poisson lots of units, sigma solved for the budget (rlaif/privacy.py)
        units = units_of(examples, privacy, getattr(task, "unit_key", None))
        dp_plan = privacy_plan(privacy, len(set(units)), per_step, config.epochs, ledger, examples=len(units))
        plan = poisson_plan(units, dp_plan, seed)
        progress.note(describe(dp_plan))
        collector = PerSampleGrads(model, params)
        noise_gen = torch.Generator().manual_seed(seed * 7919 + 17)
    else:
        plan = step_plan(lengths, per_step, config.epochs, seed, config.bucket)
    total = len(plan)
    warmup = int(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, total, warmup))

    ckpt = out_dir / "checkpoint"
    log, start = [], 0
    resumed = (
        _load_checkpoint(model, optimizer, scheduler, fingerprint, ckpt, sharded)
        if config.checkpoint_every
        else None
    )
    if resumed is not None:
        start, log = resumed
        progress.note(f"resuming training at step {start} of {total} from {ckpt}")

    before_step = getattr(task, "before_step", None)  # a figure over the whole step first (KTO's z0)
    model.train()
    progress.stage("train", total)
    progress.advance(start)
    for step in range(start, total):
        epoch, chunk = plan[step]
        if before_step is not None:
            before_step(model, data, chunk, rank, world, dist)
        if dp:
            stats = dp_accumulate(
                model,
                task,
                data,
                chunk,
                unit_share(chunk, units, rank, world),
                config.batch_size,
                params,
                dist,
                collector,
                units,
                dp_plan,
                noise_gen,
                rank,
            )
        else:
            stats = _accumulate(
                model, task, data, chunk, chunk[rank::world], config.batch_size, params, dist, sharded, world
            )
        if not bool(torch.isfinite(torch.tensor(stats["loss"]))):
            raise _diverged("the loss", stats["loss"], step, total, task)
        if dp:  # the per-unit clip bounds the sensitivity; a second clip of the noisy sum would only bias it
            grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
        else:
            grad_norm = full(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)).item()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if not all(bool(torch.isfinite(p.to_local() if is_sharded(p) else p).all()) for p in params):
            raise _diverged("a trained weight", float("nan"), step, total, task)
        task.after_step(model, step)
        record = {k: v / max(1, len(chunk)) for k, v in stats.items()}
        record.update(step=step, epoch=epoch, lr=scheduler.get_last_lr()[0], grad_norm=grad_norm)
        record[task.count_key] = len(chunk)
        log.append(_ordered(record, task.count_key))
        progress.advance(1)
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < total:
            if sharded:  # every process writes its shards
                _save_checkpoint_sharded(
                    model, optimizer, scheduler, step + 1, log, fingerprint, ckpt, rank, dist
                )
            elif rank == 0:
                _save_checkpoint(model, optimizer, scheduler, step + 1, log, fingerprint, ckpt)
            if dist is not None:
                dist.barrier()

    if dp:
        collector.close()
    recompute.unwrap(model)  # the plain module tree again before the adapter is saved (PEFT's names)
    seen = [
        x for x in log if x[task.count_key]
    ] or log  # a Poisson lot (DP) may be empty: its loss is no figure
    metrics = {
        "steps": len(log),
        task.count_key: len(data),
        "loss_first": seen[0]["loss"],
        "loss_last": seen[-1]["loss"],
        **task.summary(log, config.epochs),
        **({"privacy": record_training(ledger if rank == 0 else None, dp_plan)} if dp else {}),
        "resumed_at_step": start,
        "processes": world,
        "padding_share": _padding_share([task.rows(e) for e in data], plan, config.batch_size),
    }
    task.finish(model)
    record = {"fingerprint": fingerprint, "metrics": metrics, "log": log}
    gathered = gathered_trainable(model) if sharded else None  # collective: every process takes part
    if rank == 0:
        _save_adapter(model, record, out_dir / "adapter", gathered)
        clear(ckpt)  # the finished adapter supersedes it
    if dist is not None:
        dist.barrier()
    return model, metrics, log


def _accumulate(
    model,
    task,
    data,
    chunk: list[int],
    mine: list[int],
    batch_size: int,
    params,
    dist,
    sharded=False,
    world=1,
) -> dict:
    """One optimizer step's gradients, accumulated over this process's micro-batches (`mine`: its share of
    the step's examples `chunk`, all of them in one process), and the step's summed figures; under data
    parallelism both are summed over the processes."""
    import torch

    stats = dict.fromkeys(("loss", *task.stat_keys), 0.0)
    # sharded: every process runs as many micro-batches as the busiest one (FSDP's gathers are collective); the
    # extra ones run a real example with zero weight
    micro = (
        math.ceil(math.ceil(len(chunk) / world) / batch_size)
        if sharded
        else math.ceil(len(mine) / batch_size)
    )
    for j in range(micro):
        m = j * batch_size
        if m >= len(mine):
            loss, _ = task.loss(model, data, chunk[:1])
            (loss.sum() * 0.0).backward()
            continue
        loss, figures = task.loss(model, data, mine[m : m + batch_size])
        bad = loss.detach()[~torch.isfinite(loss.detach())]
        if bad.numel():
            stats["loss"] = bad.flatten()[
                0
            ].item()  # the caller stops the training, naming the value and step
            return stats
        # weight each micro-batch by its share of the step so uneven tails average correctly; sharded, FSDP's
        # average over the processes is turned back into their sum
        (loss.sum() / len(chunk) * (world if sharded else 1)).backward()
        stats["loss"] += loss.detach().sum().item()
        for k, v in figures.items():
            stats[k] += v
    if dist is not None:
        # each process's loss is already scaled by the whole step's size: summing gradients and step
        # figures over processes gives exactly the single-process values (a process without rows adds 0);
        # sharded, FSDP has summed the gradients already (rlaif/sharding.py)
        for p in params if not sharded else ():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
        summed = torch.tensor(list(stats.values()), dtype=torch.float64)
        dist.all_reduce(summed)
        stats = dict(zip(stats, summed.tolist(), strict=True))
    return stats


def unit_share(chunk: list[int], units: list[str], rank: int, world: int) -> list[int]:
    """This process's examples of a DP step: whole units, dealt round-robin in the order they appear, so a
    unit's gradient is clipped whole in one process."""
    owner = {u: j % world for j, u in enumerate(dict.fromkeys(units[i] for i in chunk))}
    return [i for i in chunk if owner[units[i]] == rank]


def dp_accumulate(
    model, task, data, chunk, mine, batch_size, params, dist, collector, units, p, generator, rank
) -> dict:
    """One DP-SGD step's gradient: per-unit gradients from the per-row ones (a task whose rows are not one per
    example says which example each row is, `row_examples`), each unit's scaled to norm at most C, summed, noise
    of deviation sigma C added once (rank 0), summed over processes, divided by the expected lot size."""
    import torch

    stats = dict.fromkeys(("loss", *task.stat_keys), 0.0)
    slots: dict[str, int] = {}
    sums: dict[int, torch.Tensor] = {}
    for m in range(0, len(mine), batch_size):
        idx = mine[m : m + batch_size]
        loss, figures = task.loss(model, data, idx)
        bad = loss.detach()[~torch.isfinite(loss.detach())]
        if bad.numel():
            stats["loss"] = bad.flatten()[0].item()
            return stats
        with warnings.catch_warnings():
            # LoRA's A layers take the frozen base's activations, which need no gradient: torch warns that the
            # full backward hook then sees only the output gradient, which is all the per-row gradient needs
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.sum().backward()
        rows = task.row_examples(len(idx)) if hasattr(task, "row_examples") else list(range(len(idx)))
        for i in idx:
            slots.setdefault(units[i], len(slots))
        slot = torch.tensor([slots[units[idx[r]]] for r in rows])
        for pid, (q, g) in collector.take().items():
            acc = sums.get(pid)
            if acc is None or acc.shape[0] < len(slots):
                grown = torch.zeros((len(slots), *q.shape), dtype=torch.float32, device=g.device)
                if acc is not None:
                    grown[: acc.shape[0]] = acc
                acc = grown
            sums[pid] = acc.index_add_(0, slot.to(g.device), g)
        for q in params:
            q.grad = None
        stats["loss"] += loss.detach().sum().item()
        for k, v in figures.items():
            stats[k] += v
    n = len(slots)
    if n:
        for pid in sums:  # units seen in a later micro-batch only: pad earlier parameters' tensors
            if sums[pid].shape[0] < n:
                pad = torch.zeros((n - sums[pid].shape[0], *sums[pid].shape[1:]), device=sums[pid].device)
                sums[pid] = torch.cat([sums[pid], pad])
        clipped, _ = clip_units(sums, p.clip)
    else:
        clipped = {}
    for q in params:
        g = clipped.get(id(q))
        g = torch.zeros_like(q, dtype=torch.float32) if g is None else g
        if rank == 0 and p.noise > 0:
            g = g + gaussian_noise(q.shape, p.noise * p.clip, generator).to(g.device)
        q.grad = g.to(q.dtype)
    if dist is not None:
        for q in params:
            dist.all_reduce(q.grad)
        summed = torch.tensor(list(stats.values()), dtype=torch.float64)
        dist.all_reduce(summed)
        stats = dict(zip(stats, summed.tolist(), strict=True))
    for q in params:
        q.grad /= p.lot
    return stats


def _diverged(what: str, value, step: int, total: int, task) -> TrainingDiverged:
    import torch

    if isinstance(value, torch.Tensor):
        bad = value[~torch.isfinite(value)]
        value = bad[0].item() if bad.numel() else value.flatten()[0].item()
    return TrainingDiverged(
        f"training diverged: {what} became {value} at step {step + 1} of {total}. Nothing of this training is "
        f"kept (no adapter, no merged model, the round is not complete). Change {task.diverge_keys}, then run "
        "the same command again."
    )


def _ordered(record: dict, count_key: str) -> dict:
    """The step record's keys in the log's order: the figures, then step, epoch, count, lr, grad norm."""
    head = {k: v for k, v in record.items() if k not in ("step", "epoch", count_key, "lr", "grad_norm")}
    return {**head, **{k: record[k] for k in ("step", "epoch", count_key, "lr", "grad_norm")}}


def merge(model):
    """Fold the LoRA adapter into the weights: the plain model, in eval mode."""
    merged = model.merge_and_unload()
    merged.eval()
    return merged


def _padding_share(rows: list[list[int]], plan, batch_size: int) -> float:
    """Share of the token slots in the training forwards that were padding."""
    real = padded = 0
    for _, chunk in plan:
        for m in range(0, len(chunk), batch_size):
            lengths = [n for i in chunk[m : m + batch_size] for n in rows[i]]
            real += sum(lengths)
            padded += max(lengths) * len(lengths)
    return 1 - real / padded if padded else 0.0
