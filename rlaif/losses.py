"""Pure loss functions over tensors. Each returns per-example values; the trainer takes the mean.

All preference losses read h = (log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x)),
the difference of the two log-ratios (with length normalisation the log-probs are per-token means):

- sigmoid, DPO (Rafailov et al., arXiv:2305.18290): -log sigmoid(beta h). Policy = reference gives ln 2.
  With a target probability t that the chosen response is the better (soft labels; conservative DPO when t is
  one constant 1 - eps, Mitchell 2023): -(t log sigmoid(beta h) + (1 - t) log sigmoid(-beta h)), the cross-entropy
  of the implicit preference against t; least at beta h = logit(t), a finite margin (t = 1 is DPO). Policy =
  reference still gives ln 2.
- ipo, IPO (Azar et al., arXiv:2310.12036): (h - 1/(2 beta))^2, a squared loss that does not push the margin
  to infinity on deterministic preferences. Policy = reference gives 1/(4 beta^2).
- robust, label-noise-robust DPO (Chowdhury et al., arXiv:2403.00409): with eps the assumed share of flipped
  labels, ((1 - eps) l(h) - eps l(-h)) / (1 - 2 eps), l(h) = -log sigmoid(beta h): an unbiased estimate of
  the clean-label loss. Policy = reference gives ln 2.
- hinge, SLiC (Zhao et al., arXiv:2305.10425): max(0, 1 - beta h). Policy = reference gives 1.

KTO (Ethayarajh et al., arXiv:2402.01306) is unpaired: each completion y of a prompt x is desirable or not, with
r = log pi(y|x) - log pi_ref(y|x) and a reference point z0 = max(0, mean KL estimate on mismatched (x, y') pairs),
no gradient through z0: loss lambda_D (1 - sigmoid(beta (r - z0))) for a desirable completion, lambda_U (1 -
sigmoid(beta (z0 - r))) for an undesirable one (`kto_loss`, `kto_reference_point`).

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
    return picked_logps(logits[mask], labels[mask], mask.nonzero(as_tuple=True)[0], logits.shape[0])


def picked_logps(picked: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Per row of a batch of n, the sum of log p(label) over its tokens: picked (N, V), the logits that predict
    the N tokens `labels` (N,), token i in batch row rows[i]."""
    # fp32: bf16 log-probs of 50k-way softmaxes lose the small differences DPO feeds on
    picked = picked.float()
    token_logps = picked.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(picked, dim=-1)
    return torch.zeros(n, dtype=token_logps.dtype, device=picked.device).index_add(0, rows, token_logps)


def dpo_sigmoid_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    target: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO loss per example, with the implicit rewards of chosen and rejected (detached).

    All inputs are (B,) sequence log-probs; `target`, a (B,) tensor or a number, the probability that the
    chosen response is the better one (None: 1, plain DPO). Returns (loss, chosen_reward, rejected_reward),
    each (B,).
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    z = chosen_reward - rejected_reward
    loss = -F.logsigmoid(z)
    if target is not None:
        loss = target * loss + (1 - target) * -F.logsigmoid(-z)
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
    target: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One of LOSSES per example, with the implicit rewards beta * log-ratio of chosen and rejected (detached).

    All inputs are (B,) sequence log-probs (sums, or per-token means under length normalisation); `target`
    (sigmoid only): the probability that the chosen response is the better (soft labels)."""
    if kind == "sigmoid":
        return dpo_sigmoid_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, target)
    if target is not None:
        raise ValueError(f"soft labels (a target probability) are for the sigmoid loss, not {kind!r}")
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


def kto_reference_point(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's z0 from the mismatched pairs' sequence log-probs (policy and reference, (B,)): the batch mean of
    their difference, floored at 0, detached (a scalar). Under data parallelism sum the differences and counts
    over the processes first (`kto_reference_point_from`)."""
    return kto_reference_point_from((policy_kl_logps - ref_kl_logps).sum(), policy_kl_logps.numel())


def kto_reference_point_from(kl_sum: torch.Tensor, count) -> torch.Tensor:
    """z0 = max(0, kl_sum / count), detached: the form that composes over processes (sum, then divide)."""
    return (kl_sum.detach() / max(int(count), 1)).clamp(min=0)


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    z0: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO loss per example and its implicit reward beta * (log pi - log pi_ref) (detached).

    policy_logps, ref_logps: (B,) sequence log-probs of each completion; desirable: (B,) bool; z0: the
    reference point (a detached scalar, see `kto_reference_point`)."""
    ratio = policy_logps - ref_logps
    z0 = z0.detach()
    loss = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (ratio - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - ratio))),
    )
    return loss, (beta * ratio).detach()


def nll_term(policy_chosen_sum: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of each chosen response: -sum log p / tokens, (B,)."""
    return -policy_chosen_sum / chosen_tokens.clamp(min=1)


def response_nll(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Supervised fine-tuning's loss terms per sequence: (sum of -log p over the masked tokens, their count,
    how many of them are the argmax). Shapes as in `sequence_logps` (position t's logits predict token t+1);
    `mask` is 1 on the tokens trained on (the response, its EOS included), 0 on prompt and padding."""
    logits = logits[:, :-1, :]
    labels = labels[:, 1:]
    mask = mask[:, 1:].bool()
    return picked_nll(logits[mask], labels[mask], mask.nonzero(as_tuple=True)[0], logits.shape[0])


def picked_nll(
    picked: torch.Tensor, target: torch.Tensor, rows: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`response_nll` from the logits at the trained tokens alone: picked (N, V) predicts target (N,), token i in
    batch row rows[i] of n."""
    picked = picked.float()
    nll = torch.logsumexp(picked, dim=-1) - picked.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    zero = torch.zeros(n, dtype=nll.dtype, device=picked.device)
    return (
        zero.index_add(0, rows, nll),
        zero.index_add(0, rows, torch.ones_like(nll)),
        zero.index_add(0, rows, (picked.argmax(-1) == target).to(nll.dtype)),
    )


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


def logistic_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary classifier loss per example: -[y log sigmoid(z) + (1 - y) log sigmoid(-z)] = softplus(z) - y z
    (rlaif/applicability.py's prompt classifier). z = 0: ln 2 whatever the label."""
    return F.softplus(logits) - labels * logits


# -- policy-gradient RL (rlaif/stages/rl.py) ---------------------------------------------------------------
#
# Reward maximisation held close to a reference: maximise E[r(x, y)] - beta KL(pi || pi_ref) (Ziegler et al.,
# arXiv:1909.08593). Advantages are per sequence (RLOO, GRPO) or per token (PPO with GAE); the KL is either a
# per-token penalty in the reward (k1) or a loss term (k3).


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al., arXiv:2402.14740): each of the k samples of a prompt is
    baselined by the mean reward of the other k - 1. rewards: (prompts, k), k >= 2."""
    k = rewards.shape[-1]
    others = (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)
    return rewards - others


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Group-normalised advantages (GRPO, arXiv:2402.03300): (r - mean) / (std + eps) over each prompt's k
    samples (std with Bessel's correction, as torch computes it). rewards: (prompts, k), k >= 2."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True)
    return (rewards - mean) / (std + eps)


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate log pi - log pi_ref on samples of pi: unbiased, can be negative (Schulman's k1)."""
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate (pi_ref / pi) - log(pi_ref / pi) - 1 on samples of pi: unbiased and never negative
    (Schulman's k3, the GRPO loss term)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def kl_from_old_samples(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimated on samples of pi_ref (the rollouts, once the policy has moved):
    rho log rho - rho + 1 with rho = pi / pi_ref. Unbiased (E_ref[rho log rho] is the KL and E_ref[rho - 1] = 0)
    and never negative; 0 while pi = pi_ref. What the rl stage logs and the adaptive beta tracks."""
    log_rho = logp - ref_logp
    rho = torch.exp(log_rho)
    return rho * log_rho - rho + 1


def clipped_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip: float
) -> torch.Tensor:
    """PPO's clipped surrogate per token (Schulman et al., arXiv:1707.06347): -min(rho A, clip(rho, 1-e, 1+e) A)
    with rho = pi / pi_old. At rho = 1 its gradient is -A grad log pi, REINFORCE's."""
    ratio = torch.exp(logp - old_logp)
    return -torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages)


def shaped_off_policy_loss(logp: torch.Tensor, advantages: torch.Tensor, gamma: float) -> torch.Tensor:
    """The per-token policy-gradient loss on a response the policy did not sample (a guided one): LUFFY's
    regularised importance sampling (Yan et al., arXiv:2504.14945). The behaviour policy's probability is taken as
    1, so the ratio is the policy's own p, shaped as f(p) = p / (p + gamma) and not clipped: -f(p) A per token.
    Its gradient, gamma / (p + gamma)^2 times p's, weighs the tokens the policy finds unlikely (p << 1) more than
    the plain ratio's would, so a good off-policy answer can be learned where it starts far down the distribution.
    """
    p = logp.exp()
    return -(p / (p + gamma)) * advantages


def likelihood_off_policy_loss(logp: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """The per-token loss on an off-policy response taken as if the policy had sampled it: -A log p, REINFORCE at
    ratio 1 with no clip, the advantage-weighted log-likelihood (an NLL term where A > 0, pushing the response down
    where A < 0). Its gradient in log p is -A on every token, four or more times the shaped loss's (pure)."""
    return -advantages * logp


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation over one sequence's tokens: (advantages, returns), each (T,). The value
    after the last token is 0 (the episode ends there). delta_t = r_t + gamma V_{t+1} - V_t;
    A_t = delta_t + gamma lam A_{t+1}; returns = A + V."""
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    running = torch.zeros((), dtype=rewards.dtype)
    for t in range(T - 1, -1, -1):
        next_value = values[t + 1] if t + 1 < T else torch.zeros((), dtype=values.dtype)
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv, adv + values


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float):
    """PPO's value loss per token: 0.5 max((V - R)^2, (clip(V, V_old - e, V_old + e) - R)^2)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def whiten(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the batch (population std); a batch of one is only centred."""
    if x.numel() < 2:
        return x - x.mean()
    return (x - x.mean()) / (x.std(unbiased=False) + eps)


def adaptive_beta(beta: float, kl: float, target: float, steps: int = 1, horizon: int = 10000) -> float:
    """Ziegler et al.'s proportional controller: beta *= 1 + clip(kl / target - 1, -0.2, 0.2) * steps / horizon,
    raising beta when the measured KL is above the target and lowering it when below."""
    error = max(-0.2, min(0.2, kl / target - 1))
    return beta * (1 + error * steps / horizon)
