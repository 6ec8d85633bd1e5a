"""Activation checkpointing for every training stage: each decoder layer's activations are recomputed in the
backward pass instead of kept from the forward, so a step holds one layer's activations at a time rather than
every layer's (less memory, about a third more compute: the layers' forwards run twice).

`launch.activation_checkpointing = true` turns it on for a run's training stages, in one process or many,
replicated or sharded (the launcher passes it to its processes as RLAIF_ACTIVATION_CHECKPOINTING=1; a stage run
in the round's own process gets the same variable for its duration); `rlaif train` and `rlaif sft` take it from
`--set`, and any training reads the variable (`rlaif rm train --mode lora`). The trainer wraps each decoder layer
(PyTorch's non-reentrant checkpoint_wrapper) after LoRA is attached and before any sharding, saves checkpoints under
the unwrapped parameter names, and takes the wrappers off when the training loop ends, before the adapter is saved:
the trained model is the plain module tree again.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from rlaif.data import DataError

CHECKPOINTING_ENV = "RLAIF_ACTIVATION_CHECKPOINTING"
WRAPPED = "_checkpoint_wrapped_module."
"""What the wrapper puts in a parameter's name (its state dict leaves it out)."""


def requested() -> bool:
    return os.environ.get(CHECKPOINTING_ENV) == "1"


@contextmanager
def requested_for(on: bool):
    """Within the block, training in this process checkpoints activations if `on` (the variable restored after)."""
    before = os.environ.get(CHECKPOINTING_ENV)
    if on:
        os.environ[CHECKPOINTING_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CHECKPOINTING_ENV, None)
        else:
            os.environ[CHECKPOINTING_ENV] = before


def decoder_layers(model) -> list:
    """The model's transformer blocks (modules whose class name ends in DecoderLayer or Block)."""
    return [m for m in model.modules() if type(m).__name__.endswith(("DecoderLayer", "Block"))]


def wrap(model) -> int:
    """Wrap every decoder layer of `model` in a checkpoint wrapper; returns how many. A model with no module named
    like a decoder layer is refused (nothing would be recomputed)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    kinds = tuple({type(m) for m in decoder_layers(model)})
    if not kinds:
        raise DataError(
            "launch.activation_checkpointing: the model has no module whose class name ends in DecoderLayer or "
            f"Block ({type(model).__name__}); turn it off for this model"
        )
    apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, kinds))
    # no KV cache while training: the recomputed forward would append a layer's keys to it a second time
    configs = {
        id(c): c for m in model.modules() if getattr(c := getattr(m, "config", None), "use_cache", False)
    }
    model._rlaif_cached = list(configs.values())
    for c in model._rlaif_cached:
        c.use_cache = False
    return len(wrappers(model))


def wrappers(model) -> list:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    return [m for m in model.modules() if isinstance(m, CheckpointWrapper)]


def unwrap(model) -> None:
    """Put each wrapped layer back in its wrapper's place and the KV cache back on (the model as it was before
    `wrap`)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, CheckpointWrapper):
                setattr(parent, name, child._checkpoint_wrapped_module)
    for c in model.__dict__.pop("_rlaif_cached", []):
        c.use_cache = True


def plain_name(name: str) -> str:
    """A parameter's name without the wrapper's part."""
    return name.replace(WRAPPED, "")
