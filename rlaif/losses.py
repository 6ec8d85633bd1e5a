"""Pure loss functions over tensors. Each returns per-example values; the trainer takes the mean.

All preference losses read h = (log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x)),
the difference of the two log-ratios (with length normalisation the log-probs are per-token means):

- sigmoid, DPO (Rafailov et al., arXiv:2305.18290): -log sigmoid(beta h). Policy = reference gives ln 2.
- ipo, IPO (Azar et al., arXiv:2310.12036): (h - 1/(2 beta))^2, a squared loss that does not push the margin
  to infinity on deterministic preferences. Policy = reference gives 1/(4 beta^2).
- robust, label-noise-robust DPO (Chowdhury et al., arXiv:2403.00409): with eps the assumed share of flipped
  labels, ((1 - eps) l(h) - eps l(-h)) / (1 - 2 eps), l(h) = -log sigmoid(beta h): an unbiased estimate of
  the clean-label loss. Policy = reference gives ln 2.
- hinge, SLiC (Zhao et al., arXiv:2305.10425): max(0, 1 - beta h). Policy = reference gives 1.

`nll_term` is the optional negative log-likelihood of the chosen response per token (as in RPO,
arXiv:2404.19733) that keeps the chosen log-probs from falling along with the rejected ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(label_t | prefix) over the positions where `mask` is 1.

    logits: (B, T, V) from the model on input ids (B, T); labels: the same input ids (B, T); mask: (B, T),
    1 on the response tokens. Position t's logits predict token t+1, hence the shift.

    Only the masked positions are normalised: log p = logit[label] - logsumexp(logits), on the (N, V) rows of
    response tokens, not a full (B, T, V) log-softmax (prompt and padding rows would be computed and thrown away).
    """
    logits = logits[:, :-1, :]
    labels = labels[:, 1:]
    mask = mask[:, 1:].bool()
    rows = mask.nonzero(as_tuple=True)[0]
    # fp32: bf16 log-probs of 50k-way softmaxes lose the small differences DPO feeds on
    picked = logits[mask].float()
    token_logps = picked.gather(-1, labels[mask].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(picked, dim=-1)
    return torch.zeros(logits.shape[0], dtype=token_logps.dtype, device=logits.device).index_add(
        0, rows, token_logps
    )


def dpo_sigmoid_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO loss per example, with the implicit rewards of chosen and rejected (detached).

    All inputs are (B,) sequence log-probs. Returns (loss, chosen_reward, rejected_reward), each (B,).
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_reward - rejected_reward)
    return loss, chosen_reward.detach(), rejected_reward.detach()


LOSSES = ("sigmoid", "ipo", "robust", "hinge")


def preference_loss(
    kind: str,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_noise: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One of LOSSES per example, with the implicit rewards beta * log-ratio of chosen and rejected (detached).

    All inputs are (B,) sequence log-probs (sums, or per-token means under length normalisation)."""
    if kind == "sigmoid":
        return dpo_sigmoid_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if kind == "ipo":
        loss = (h - 1 / (2 * beta)) ** 2
    elif kind == "robust":
        eps = label_noise
        loss = ((1 - eps) * -F.logsigmoid(beta * h) - eps * -F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    elif kind == "hinge":
        loss = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown loss {kind!r}; one of {', '.join(LOSSES)}")
    return loss, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()


def nll_term(policy_chosen_sum: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of each chosen response: -sum log p / tokens, (B,)."""
    return -policy_chosen_sum / chosen_tokens.clamp(min=1)


def bradley_terry_loss(
    reward_chosen: torch.Tensor, reward_rejected: torch.Tensor, margin: float = 0.0, centring: float = 0.0
) -> torch.Tensor:
    """Reward-model loss per pair (Bradley-Terry): -log sigmoid(r_c - r_r - margin), plus
    centring * (r_c + r_r)^2, which pins the rewards' mean near 0 (Eisenstein et al., arXiv:2312.09244) so
    rewards from different models or rounds sit on one scale. Equal rewards, no margin: ln 2."""
    loss = -F.logsigmoid(reward_chosen - reward_rejected - margin)
    if centring:
        loss = loss + centring * (reward_chosen + reward_rejected) ** 2
    return loss
