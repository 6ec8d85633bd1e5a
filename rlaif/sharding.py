"""Models larger than one GPU: the trainer loop's sharded mode, PyTorch's FSDP2 (`fully_shard`).

With `launch.shard = "fsdp"` (the launcher passes it to its processes as RLAIF_SHARD), each training process holds
a shard of every parameter: the frozen base and the LoRA adapter (and any head) alike. Each decoder layer is its
own FSDP unit (gathered for its forward and backward, freed after), the root holds the rest. On a GPU the layers
compute in bf16 with fp32 gradient reduction (MixedPrecisionPolicy); `launch.activation_checkpointing` recomputes
each layer's activations in the backward pass instead of keeping them (rlaif/recompute.py; the trainer wraps the
layers before sharding them). FSDP averages gradients over processes; each process's loss, already scaled by the
whole step's size, is multiplied by the number of processes, so the average is the sum and the step equals one
process's.

Every process runs the same number of forwards and backwards per step (FSDP's gathers are collective): a process
with fewer examples than another runs the missing micro-batches on a real example with zero weight. The
reference log-probs (adapter off) run under the same sharding. A task that reads the model other than through its
forward (the LoRA reward model reads the body's features and its head) gives the root an `rlaif_forward` method,
registered with FSDP so the root's parameters are gathered for it too.

A model taken for training is loaded on the CPU (rlaif/pool.py), never whole on a GPU: fully_shard moves each unit
to the GPU as it shards it, so a GPU holds its shards and at most one whole layer while the model is set up.

Checkpoints are sharded: each process writes its shards of the trainable parameters and of the optimizer state
(torch.distributed.checkpoint) and a killed training resumes on the same number of processes. The finished
adapter is gathered and written once, by rank 0, as a normal PEFT adapter; the merge stage loads it as usual.
"""

from __future__ import annotations

import os
from pathlib import Path

from rlaif.recompute import decoder_layers

SHARD_ENV = "RLAIF_SHARD"


def shard_mode() -> str:
    return os.environ.get(SHARD_ENV, "none")


def sharded_training() -> bool:
    """Is this process one of a group that trains under launch.shard = fsdp?"""
    import torch.distributed as td

    return shard_mode() == "fsdp" and td.is_available() and td.is_initialized()


def shard(model, device: str):
    """fully_shard every decoder layer, then the root; gradient sums (not means) over processes."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = {}
    if str(device).startswith("cuda") or torch.cuda.is_available():  # loaded on the CPU, sharded onto the GPU
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    # the layers, wrapped for activation checkpointing first if asked (rlaif/recompute.py)
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    if hasattr(model, "rlaif_forward"):  # a task's own forward of the root (the reward model's rewards)
        from torch.distributed.fsdp import register_fsdp_forward_method

        register_fsdp_forward_method(model, "rlaif_forward")
    return model


def is_sharded(t) -> bool:
    return hasattr(t, "full_tensor")


def full(t):
    """A parameter or gradient as a whole tensor (gathered: every process must call it)."""
    return t.full_tensor() if is_sharded(t) else t


def gathered_trainable(model) -> dict:
    """{name: whole tensor} of the trainable (and adapter) parameters, gathered on every process."""
    return {n: full(p.detach()).cpu() for n, p in model.named_parameters() if "lora_" in n or p.requires_grad}


def save_sharded(model, optimizer, path: Path) -> None:
    """Each process writes its shards of the trainable parameters and the optimizer state (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(ignore_frozen_params=True)
    msd, osd = get_state_dict(model, optimizer, options=opts)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(path))


def load_sharded(model, optimizer, path: Path) -> None:
    """Load this process's shards of the trainable parameters and the optimizer state (collective)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(ignore_frozen_params=True)
    msd, osd = get_state_dict(model, optimizer, options=opts)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(path))
    # the frozen base is not in the checkpoint (it is the model the training started from): copy the trainable
    # shards in by name, then the optimizer's
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in state["model"].items():
            target = named.get(name)
            if target is None:
                target = named.get(
                    name.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
                )
            if target is not None and target is not t:
                target.copy_(t)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optim"], options=opts)
