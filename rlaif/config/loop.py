"""The training-loop keys every training stage (DPO, SFT, RL) shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from rlaif.checks import check, finite_numbers

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""The linear layers of a Llama-style block: attention and MLP projections."""


@dataclass
class LoopConfig:
    """The training-loop keys every training stage shares; a stage's config adds its own after these."""

    SECTION: ClassVar[str] = "dpo"

    learning_rate: float = 5e-4
    """AdamW peak learning rate (after the warm-up; decays linearly to zero)."""
    epochs: int = 2
    """Passes over the round's training examples."""
    batch_size: int = 4
    """Examples per micro-batch (a preference pair's chosen and rejected go through the model together)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (gradient accumulation)."""
    warmup_ratio: float = 0.1
    """Linear warm-up over this share of the steps, then linear decay to zero."""
    weight_decay: float = 0.0
    """AdamW weight decay on the LoRA weights."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm before each step."""
    max_length: int = 640
    """Prompt + response tokens per sequence; prompts are cut from the left."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scale numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.0
    """0 keeps the policy equal to the reference at step one (DPO's loss ln 2); dropout makes them differ."""
    lora_target: list[str] = field(default_factory=lambda: list(ALL_PROJECTIONS))
    """Module names LoRA adapts: every attention and MLP projection by default."""
    bucket: bool = True
    """Group examples of similar length into the same micro-batches (less padding)."""
    checkpoint_every: int = 20
    """Save a resumable training checkpoint every this many optimizer steps; 0 = never."""

    def __post_init__(self):
        s = self.SECTION
        finite_numbers(self, s)
        check(self.learning_rate > 0, f"{s}.learning_rate", "must be > 0")
        check(self.epochs >= 1, f"{s}.epochs", "must be >= 1")
        check(self.batch_size >= 1, f"{s}.batch_size", "must be >= 1")
        check(self.grad_accum >= 1, f"{s}.grad_accum", "must be >= 1")
        check(0 <= self.warmup_ratio < 1, f"{s}.warmup_ratio", "must be in [0, 1)")
        check(self.weight_decay >= 0, f"{s}.weight_decay", "must be >= 0")
        check(
            self.max_grad_norm > 0, f"{s}.max_grad_norm", "must be > 0 (gradients are clipped to this norm)"
        )
        check(self.lora_alpha > 0, f"{s}.lora_alpha", "must be > 0")
        check(self.max_length >= 16, f"{s}.max_length", "must be >= 16")
        check(self.lora_r >= 1, f"{s}.lora_r", "must be >= 1")
        check(0 <= self.lora_dropout < 1, f"{s}.lora_dropout", "must be in [0, 1)")
        check(len(self.lora_target) > 0, f"{s}.lora_target", "must name at least one module")
        check(self.checkpoint_every >= 0, f"{s}.checkpoint_every", "must be >= 0 (0 = never)")
