"""The [launch] section: training on several processes and nodes (rlaif/launch.py runs it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlaif.checks import check, one_of


@dataclass
class LaunchConfig:
    processes: int = 1
    """Training processes per node (one per GPU); above 1 (or with nodes > 1) the training stages run under
    the launcher."""
    nodes: int = 1
    """Machines taking part in training; above 1 the launcher needs `rdzv_endpoint` and, usually, `prefix`."""
    launcher: str = "torchrun"
    """"torchrun" (torch.distributed.run) or "accelerate" (`accelerate launch`, one node)."""
    rdzv_endpoint: str = ""
    """host:port of the rendezvous for several nodes (torchrun's c10d store; the first node's address); empty
    = this machine's name, port 29500."""
    prefix: list[str] = field(default_factory=list)
    """A command that starts the launcher once on every node, put before it: e.g. ["srun", "--nodes=2",
    "--ntasks-per-node=1"] on Slurm. The run folder must be on a filesystem every node sees."""

    shard: str = "none"
    """"none": each training process holds the whole model (replicated; the default where the model fits one
    GPU). "fsdp": FSDP2 shards every parameter over the processes (the base and the adapter), for models larger
    than one GPU; bf16 compute with fp32 gradient reduction on GPUs; checkpoints sharded (rlaif/sharding.py)."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping them (less memory, about
    a third more compute), in every training stage (dpo, sft, rl): one process or several, replicated or sharded."""

    def __post_init__(self):
        one_of(self.shard, ("none", "fsdp"), "launch.shard")
        check(self.processes >= 1, "launch.processes", "must be >= 1")
        check(self.nodes >= 1, "launch.nodes", "must be >= 1")
        one_of(self.launcher, ("torchrun", "accelerate"), "launch.launcher")
        check(
            self.launcher == "torchrun" or self.nodes == 1,
            "launch.launcher",
            "several nodes are launched with torchrun (its c10d rendezvous needs no per-node rank)",
        )
        check(
            not self.rdzv_endpoint or ":" in self.rdzv_endpoint,
            "launch.rdzv_endpoint",
            f"must be host:port, got {self.rdzv_endpoint!r}",
        )

    @property
    def active(self) -> bool:
        return self.processes * self.nodes > 1
