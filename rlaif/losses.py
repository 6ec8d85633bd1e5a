"""Pure loss functions over tensors. Each returns per-example values; the trainer takes the mean.

DPO (Rafailov et al., arXiv:2305.18290): with implicit rewards r = beta * (log pi(y|x) - log pi_ref(y|x)),
    loss = -log sigmoid(r_chosen - r_rejected).
When the policy equals the reference every reward is 0 and the loss is ln 2 = 0.6931.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(label_t | prefix) over the positions where `mask` is 1.

    logits: (B, T, V) from the model on input ids (B, T); labels: the same input ids (B, T); mask: (B, T),
    1 on the response tokens. Position t's logits predict token t+1, hence the shift.
    """
    logits = logits[:, :-1, :]
    labels = labels[:, 1:]
    mask = mask[:, 1:].to(logits.dtype)
    # log_softmax in fp32: bf16 log-probs of 50k-way softmaxes lose the small differences DPO feeds on
    logps = torch.log_softmax(logits.float(), dim=-1)
    token_logps = torch.gather(logps, 2, labels.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1)


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
