"""The policy-gradient math, each value derived by hand in the test."""

import math

import pytest
import torch

from rlaif.losses import (
    adaptive_beta,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    grpo_advantages,
    kl_from_old_samples,
    kl_k1,
    kl_k3,
    likelihood_off_policy_loss,
    rloo_advantages,
    shaped_off_policy_loss,
    whiten,
)

t = torch.tensor


def test_rloo_baselines_each_sample_by_the_others():
    # rewards 1, 2, 6: baselines (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5
    a = rloo_advantages(t([[1.0, 2.0, 6.0], [0.0, 0.0, 0.0]]))
    assert a.tolist() == [[-3.0, -1.5, 4.5], [0.0, 0.0, 0.0]]
    # k = 2: each is baselined by the other
    assert rloo_advantages(t([[3.0, 1.0]])).tolist() == [[2.0, -2.0]]


def test_grpo_normalises_within_each_group():
    # rewards 1, 2, 6: mean 3, std (Bessel) sqrt((4 + 1 + 9) / 2) = sqrt(7)
    a = grpo_advantages(t([[1.0, 2.0, 6.0]]), eps=0.0)
    s = math.sqrt(7)
    assert a[0].tolist() == pytest.approx([-2 / s, -1 / s, 3 / s])
    # equal rewards: nothing to learn, advantages 0 (eps keeps it finite)
    assert grpo_advantages(t([[2.0, 2.0]])).tolist() == [[0.0, 0.0]]


def test_kl_estimators():
    logp, ref = t([-1.0, -2.0]), t([-1.5, -1.0])
    assert kl_k1(logp, ref).tolist() == [0.5, -1.0]  # can be negative
    # k3 with d = ref - logp: e^d - d - 1; d = -0.5: e^-0.5 - 0.5; d = 1: e - 2
    assert kl_k3(logp, ref).tolist() == pytest.approx([math.exp(-0.5) - 0.5, math.e - 2])
    assert kl_k3(t([-3.0]), t([-3.0])).item() == 0.0  # policy = reference: no KL


def test_kl_on_the_reference_samples_is_never_negative():
    # rho = 2 (log rho = ln 2): 2 ln 2 - 2 + 1; rho = 1/2: -ln 2 / 2 - 1/2 + 1
    got = kl_from_old_samples(t([math.log(2), -math.log(2)]), t([0.0, 0.0]))
    assert got.tolist() == pytest.approx([2 * math.log(2) - 1, 0.5 - math.log(2) / 2])
    assert kl_from_old_samples(t([-1.2]), t([-1.2])).item() == 0.0


def test_the_kl_penalty_pulls_towards_the_reference():
    # a policy that puts more mass on a token than the reference has positive k1 and k3 there; the penalty
    # beta * KL added to the loss must lower that log-prob when followed downhill
    logp = t([-0.5], requires_grad=True)
    ref = t([-1.0])
    (0.1 * kl_k3(logp, ref)).sum().backward()
    assert logp.grad.item() > 0  # gradient descent moves logp down, towards the reference
    logp2 = t([-1.5], requires_grad=True)
    (0.1 * kl_k3(logp2, ref)).sum().backward()
    assert logp2.grad.item() < 0  # below the reference: pushed up


def test_clipped_policy_loss():
    # ratio 1: the loss is -A
    assert clipped_policy_loss(t([-1.0]), t([-1.0]), t([2.0]), 0.2).item() == -2.0
    # ratio e^0.5 = 1.65 > 1.2 with A > 0: clipped at 1.2 A
    assert clipped_policy_loss(t([-0.5]), t([-1.0]), t([2.0]), 0.2).item() == pytest.approx(-2.4)
    # with A < 0 the unclipped (larger) penalty is kept: -min(1.65 * -2, 1.2 * -2) = 3.30
    assert clipped_policy_loss(t([-0.5]), t([-1.0]), t([-2.0]), 0.2).item() == pytest.approx(
        2 * math.exp(0.5)
    )
    # at ratio 1 the gradient is REINFORCE's: -A d log pi
    logp = t([-1.0], requires_grad=True)
    clipped_policy_loss(logp, t([-1.0]), t([3.0]), 0.2).sum().backward()
    assert logp.grad.item() == pytest.approx(-3.0)


def test_the_shaped_off_policy_loss_by_hand():
    # p = e^-1 = 0.3679, gamma 0.1: f = p / (p + 0.1) = 0.7863; with A = 2 the loss is -2f
    p = math.exp(-1)
    got = shaped_off_policy_loss(t([-1.0, -1.0]), t([2.0, -1.0]), 0.1)
    assert got.tolist() == pytest.approx([-2 * p / (p + 0.1), p / (p + 0.1)])
    # its gradient in log p: -A gamma p / (p + gamma)^2, here -2 * 0.1 p / (p + 0.1)^2 = -0.3365
    logp = t([-1.0], requires_grad=True)
    shaped_off_policy_loss(logp, t([2.0]), 0.1).sum().backward()
    assert logp.grad.item() == pytest.approx(-2 * 0.1 * p / (p + 0.1) ** 2)
    # an unlikely token (p = e^-5 = 0.0067) gets more of the gradient per unit of p than the plain ratio's (1):
    # d f / d p = gamma / (p + gamma)^2 = 8.8; a likely one (p = e^-0.1) less (0.1 / 1.0048^2 = 0.099)
    for lp, slope in ((-5.0, 0.1 / (math.exp(-5) + 0.1) ** 2), (-0.1, 0.1 / (math.exp(-0.1) + 0.1) ** 2)):
        x = t([lp], requires_grad=True)
        shaped_off_policy_loss(x, t([-1.0]), 0.1).sum().backward()  # loss = f(p): d/dlogp = f'(p) p
        assert x.grad.item() == pytest.approx(slope * math.exp(lp))
    assert 0.1 / (math.exp(-5) + 0.1) ** 2 > 1 > 0.1 / (math.exp(-0.1) + 0.1) ** 2


def test_the_likelihood_off_policy_loss_by_hand():
    # -A log p per token: A = 2, log p = -1 -> 2; A = -1 -> -1 (a response the reward ranks low is pushed down)
    assert likelihood_off_policy_loss(t([-1.0, -1.0]), t([2.0, -1.0])).tolist() == [2.0, -1.0]
    # its gradient in log p is -A whatever p is: REINFORCE at ratio 1, no clip
    for lp in (-5.0, -0.1):
        x = t([lp], requires_grad=True)
        likelihood_off_policy_loss(x, t([3.0])).sum().backward()
        assert x.grad.item() == -3.0


def test_gae_by_hand():
    # two tokens, reward only at the end (1), values 0.5 and 0.2, gamma 1, lambda 0.5:
    # delta_1 = 1 + 0 - 0.2 = 0.8; A_1 = 0.8
    # delta_0 = 0 + 0.2 - 0.5 = -0.3; A_0 = -0.3 + 0.5 * 0.8 = 0.1
    adv, ret = gae(t([0.0, 1.0]), t([0.5, 0.2]), gamma=1.0, lam=0.5)
    assert adv.tolist() == pytest.approx([0.1, 0.8])
    assert ret.tolist() == pytest.approx([0.6, 1.0])
    # lambda 1, zero values: the reward-to-go
    adv, _ = gae(t([0.5, 0.0, 1.0]), t([0.0, 0.0, 0.0]), gamma=1.0, lam=1.0)
    assert adv.tolist() == pytest.approx([1.5, 1.0, 1.0])


def test_clipped_value_loss():
    # V moved from 0 to 1 with clip 0.2; return 1: unclipped error 0, clipped V = 0.2, error 0.64: max -> 0.32
    assert clipped_value_loss(t([1.0]), t([0.0]), t([1.0]), 0.2).item() == pytest.approx(0.32)


def test_whiten_and_the_adaptive_beta():
    w = whiten(t([1.0, 2.0, 3.0]))
    assert w.mean().item() == pytest.approx(0.0, abs=1e-7) and w.std(unbiased=False).item() == pytest.approx(
        1.0
    )
    assert adaptive_beta(0.1, kl=12.0, target=6.0, steps=100, horizon=1000) == pytest.approx(0.1 * 1.02)
    assert adaptive_beta(0.1, kl=3.0, target=6.0, steps=100, horizon=1000) == pytest.approx(0.1 * 0.98)
    assert adaptive_beta(0.1, kl=6.0, target=6.0) == pytest.approx(0.1)
