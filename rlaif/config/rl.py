"""The [rl] section (rlaif/stages/rl.py reads it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlaif.checks import check, one_of
from rlaif.config.loop import LoopConfig


@dataclass
class RLConfig(LoopConfig):
    SECTION: ClassVar[str] = "rl"

    learning_rate: float = 1e-4
    """AdamW peak learning rate (lower than DPO's: the policy-gradient signal is noisier)."""
    epochs: int = 2
    """Inner epochs over the round's rollouts (PPO's optimisation epochs)."""
    algorithm: str = "rloo"
    """"rloo", "grpo" or "ppo"."""
    reward: str = "judge"
    """"judge" (the constitution's pointwise score), "reward_model", "mix" (a weighted sum of both),
    "discriminator" (RLHB: the round's discriminator on the response with the desired behaviour, rlaif/rlhb.py) or
    "behaviour" (RLHB-C: the round's behaviour predictor's combined reward)."""
    reward_model: str = "smollm2-135m-harmless"
    """`rl.reward` "reward_model" / "mix": a reward model folder or a shipped head."""
    judge_weight: float = 1.0
    """rl.reward "mix": the weight of the judge's score in the sum."""
    rm_weight: float = 1.0
    """rl.reward "mix": the weight of the reward model's score in the sum."""
    safety_gate: float = 0.0
    """rl.reward "judge" / "mix", > 0: Llama 2's safety gate (arXiv:2307.09288): a response to a prompt not flagged
    harmful is also scored under a harmlessness principle, and where that score's probability is below this
    (Llama 2: 0.15) the harmlessness score is its reward. Flagged prompts are scored under harmlessness
    principles with `judge.applicability = "classifier"` in any case."""
    length_penalty: float = 0.0
    """Subtracted from the reward per response token (against rewards won by length)."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the reward of a rollout cut at `generate.max_new_tokens` before it finished (TRL's
    `missing_eos_penalty`): an answer that trails off earns less than the same score for a complete one. 0 = off."""
    whiten_rewards: bool = True
    """Standardise the round's rewards (mean 0, deviation 1) before advantages."""
    reward_clip: float = 0.0
    """> 0: clip the (whitened) rewards to [-c, c]."""
    kl: str = "loss"
    """"reward": a per-token k1 penalty in the reward; "loss": a k3 loss term."""
    beta: float = 0.05
    """The KL coefficient: how hard the policy is held to the reference (adapted with target_kl)."""
    target_kl: float = 0.0
    """> 0: adapt beta towards this KL per response (nats), Ziegler et al.'s controller; 0 = beta fixed."""
    horizon: int = 1000
    """The adaptive controller's horizon (optimizer steps)."""
    clip: float = 0.2
    """PPO's ratio clip (also for rloo and grpo over the inner epochs)."""
    vf_coef: float = 0.1
    """PPO: the value loss's weight beside the policy loss."""
    gamma: float = 1.0
    """PPO: the discount over response tokens (1: the last token's reward counts fully for each)."""
    gae_lambda: float = 0.95
    """PPO: GAE's lambda (1: Monte Carlo returns; 0: one-step TD)."""

    off_policy: str = "refuse"
    """Guided responses (`generate.guided_samples`, the constitution's `[guidance]`), which the policy did not
    sample: "refuse" (the run stops before its first stage), or join a prompt's rollouts as off-policy data, in its
    RLOO / GRPO group like the others and left out of the KL term, trained with "shaped" (LUFFY's ratio
    p / (p + rl.off_policy_gamma), arXiv:2504.14945, not clipped) or "likelihood" (-A log p per token, as if the
    policy had sampled them: the advantage-weighted log-likelihood). A refusal the policy rarely writes unprompted
    gets reinforced where the reward prefers it."""
    off_policy_gamma: float = 0.1
    """rl.off_policy "shaped": gamma in f(p) = p / (p + gamma) (LUFFY's 0.1): its gradient is largest on tokens of
    probability near gamma, at most a quarter of an on-policy token's."""

    def __post_init__(self):
        super().__post_init__()
        one_of(self.algorithm, ("rloo", "grpo", "ppo"), "rl.algorithm")
        one_of(self.reward, ("judge", "reward_model", "mix", "discriminator", "behaviour"), "rl.reward")
        one_of(self.kl, ("reward", "loss"), "rl.kl")
        check(self.beta >= 0, "rl.beta", "must be >= 0")
        check(self.target_kl >= 0, "rl.target_kl", "must be >= 0 (0 = a fixed beta)")
        check(self.horizon >= 1, "rl.horizon", "must be >= 1")
        check(0 < self.clip < 1, "rl.clip", "must be in (0, 1)")
        check(self.length_penalty >= 0, "rl.length_penalty", "must be >= 0")
        check(self.missing_eos_penalty >= 0, "rl.missing_eos_penalty", "must be >= 0 (0 = off)")
        check(self.reward_clip >= 0, "rl.reward_clip", "must be >= 0 (0 = off)")
        check(0 <= self.safety_gate < 1, "rl.safety_gate", "must be in [0, 1) (0 = off)")
        check(self.vf_coef >= 0, "rl.vf_coef", "must be >= 0")
        one_of(self.off_policy, ("refuse", "shaped", "likelihood"), "rl.off_policy")
        check(self.off_policy_gamma > 0, "rl.off_policy_gamma", "must be > 0")
        check(0 < self.gamma <= 1, "rl.gamma", "must be in (0, 1]")
        check(0 <= self.gae_lambda <= 1, "rl.gae_lambda", "must be in [0, 1]")
