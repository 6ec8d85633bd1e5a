"""Golden values for the DPO loss, derived by hand in each test."""

import math

import pytest
import torch

from rlaif.losses import dpo_sigmoid_loss, nll_term, preference_loss, sequence_logps


def test_policy_equal_to_reference_gives_ln2():
    # every implicit reward is beta * 0 = 0, so loss = -log sigmoid(0) = ln 2
    lp = torch.tensor([-12.5, -3.0, -40.0])
    loss, rc, rr = dpo_sigmoid_loss(lp, lp - 1.0, lp, lp - 1.0, beta=0.1)
    assert torch.allclose(loss, torch.full((3,), math.log(2)), atol=1e-7)
    assert torch.all(rc == 0) and torch.all(rr == 0)


def test_hand_computed_margin():
    # chosen: -10 vs ref -11 -> reward 0.1 * 1 = 0.1; rejected: -12 vs ref -11 -> reward -0.1
    # margin 0.2 -> loss = log(1 + e^-0.2) = 0.598138869...
    loss, rc, rr = dpo_sigmoid_loss(
        torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]), beta=0.1
    )
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.2)), abs=1e-6)
    assert loss.item() == pytest.approx(0.5981389, abs=1e-6)
    assert rc.item() == pytest.approx(0.1) and rr.item() == pytest.approx(-0.1)


def test_wrong_order_costs_more_and_beta_scales():
    # reversed preference: margin -0.2 -> log(1 + e^0.2) = 0.798138869
    loss, _, _ = dpo_sigmoid_loss(
        torch.tensor([-12.0]), torch.tensor([-10.0]), torch.tensor([-11.0]), torch.tensor([-11.0]), beta=0.1
    )
    assert loss.item() == pytest.approx(math.log1p(math.exp(0.2)), abs=1e-6)
    # beta = 1: margin 2 -> log(1 + e^-2) = 0.126928011
    loss1, _, _ = dpo_sigmoid_loss(
        torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]), beta=1.0
    )
    assert loss1.item() == pytest.approx(0.126928011, abs=1e-6)


def test_gradient_pushes_chosen_up_and_rejected_down():
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    loss, _, _ = dpo_sigmoid_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.5)
    loss.sum().backward()
    # d loss / d pc = -beta * sigmoid(-0) = -0.25 ; d loss / d pr = +0.25
    assert pc.grad.item() == pytest.approx(-0.25)
    assert pr.grad.item() == pytest.approx(0.25)


def test_sequence_logps_counts_only_masked_targets():
    # vocab of 2; uniform logits everywhere -> each token has log-prob ln(1/2)
    logits = torch.zeros(1, 4, 2)
    labels = torch.tensor([[0, 1, 1, 0]])
    mask = torch.tensor([[0, 0, 1, 1]])  # the last two tokens are the response
    assert sequence_logps(logits, labels, mask).item() == pytest.approx(2 * math.log(0.5))
    # make position 1 predict token 1 (the label at position 2) with prob e^2 / (1 + e^2)
    logits[0, 1, 1] = 2.0
    expected = math.log(math.exp(2) / (1 + math.exp(2))) + math.log(0.5)
    assert sequence_logps(logits, labels, mask).item() == pytest.approx(expected, abs=1e-6)


def _one(x):
    return torch.tensor([x])


# chosen: -10 vs ref -11, rejected: -12 vs ref -11 -> h = 1 - (-1) = 2
H2 = (_one(-10.0), _one(-12.0), _one(-11.0), _one(-11.0))


def test_ipo_golden_values():
    # policy = reference: h = 0 -> (0 - 1/(2 * 0.1))^2 = 5^2 = 25
    lp = torch.tensor([-7.0, -30.0])
    loss, rc, rr = preference_loss("ipo", lp, lp - 2, lp, lp - 2, beta=0.1)
    assert torch.allclose(loss, torch.full((2,), 25.0)) and torch.all(rc == 0) and torch.all(rr == 0)
    # h = 2, beta 0.1: (2 - 5)^2 = 9; beta 0.25: 1/(2 beta) = 2 -> the minimum, loss 0
    assert preference_loss("ipo", *H2, beta=0.1)[0].item() == pytest.approx(9.0)
    assert preference_loss("ipo", *H2, beta=0.25)[0].item() == pytest.approx(0.0)
    # past the target margin the loss rises again: h = 2, beta = 0.5 -> (2 - 1)^2 = 1
    assert preference_loss("ipo", *H2, beta=0.5)[0].item() == pytest.approx(1.0)


def test_robust_golden_values():
    # eps = 0 is DPO: h = 2, beta 0.1 -> log(1 + e^-0.2) = 0.598138869
    assert preference_loss("robust", *H2, beta=0.1, label_noise=0.0)[0].item() == pytest.approx(
        0.5981389, abs=1e-6
    )
    # eps = 0.1: (0.9 * log(1 + e^-0.2) - 0.1 * log(1 + e^0.2)) / 0.8
    #          = (0.9 * 0.598138869 - 0.1 * 0.798138869) / 0.8 = (0.538324982 - 0.079813887) / 0.8 = 0.573138869
    assert preference_loss("robust", *H2, beta=0.1, label_noise=0.1)[0].item() == pytest.approx(
        0.5731389, abs=1e-6
    )
    # policy = reference: ((1 - eps) ln 2 - eps ln 2) / (1 - 2 eps) = ln 2 for any eps
    lp = _one(-5.0)
    assert preference_loss("robust", lp, lp, lp, lp, 0.1, 0.3)[0].item() == pytest.approx(
        math.log(2), abs=1e-6
    )


def test_hinge_golden_values():
    lp = _one(-5.0)
    assert preference_loss("hinge", lp, lp, lp, lp, beta=0.1)[0].item() == pytest.approx(1.0)  # 1 - 0
    assert preference_loss("hinge", *H2, beta=0.1)[0].item() == pytest.approx(0.8)  # 1 - 0.2
    assert preference_loss("hinge", *H2, beta=1.0)[0].item() == pytest.approx(0.0)  # margin 2 > 1: no loss
    # the wrong order: h = -2, beta 0.1 -> 1 + 0.2
    c, r, rc, rr = H2
    assert preference_loss("hinge", r, c, rc, rr, beta=0.1)[0].item() == pytest.approx(1.2)


def test_sigmoid_through_the_dispatcher_equals_dpo():
    assert preference_loss("sigmoid", *H2, beta=0.1)[0].item() == pytest.approx(0.5981389, abs=1e-6)
    with pytest.raises(ValueError, match="unknown loss"):
        preference_loss("kto", *H2, beta=0.1)


def test_nll_term_is_per_token():
    # -(-12) / 4 tokens = 3; a zero-token response does not divide by zero
    assert nll_term(torch.tensor([-12.0, -3.0]), torch.tensor([4, 0])).tolist() == pytest.approx([3.0, 3.0])


def test_response_nll_golden():
    """SFT's loss terms by hand: position t's logits predict token t + 1; only masked tokens count."""
    from rlaif.losses import response_nll

    logits = torch.tensor([[[0.0, 0.0], [0.0, 2.0], [5.0, 5.0]]] * 2)
    labels = torch.tensor([[0, 1, 1], [0, 1, 1]])
    mask = torch.tensor([[0, 1, 1], [0, 0, 1]])
    nll, count, correct = response_nll(logits, labels, mask)
    # row 0: tokens 1 and 2 from logits [0, 0] (-log 1/2, argmax wrong) and [0, 2] (log(1 + e^-2), argmax right)
    assert nll.tolist() == pytest.approx(
        [math.log(2) + math.log(1 + math.exp(-2)), math.log(1 + math.exp(-2))]
    )
    assert count.tolist() == [2.0, 1.0] and correct.tolist() == [1.0, 1.0]


def test_soft_labels_golden_values():
    # h = 2, beta 1 -> z = 2; target 0.8: -(0.8 log sigmoid(2) + 0.2 log sigmoid(-2))
    #   = 0.8 * 0.126928011 + 0.2 * 2.126928011 = 0.101542409 + 0.425385602 = 0.526928011
    assert preference_loss("sigmoid", *H2, beta=1.0, target=0.8)[0].item() == pytest.approx(
        0.5269280, abs=1e-6
    )
    # target 1 is DPO; policy = reference gives ln 2 whatever the target
    assert preference_loss("sigmoid", *H2, beta=0.1, target=1.0)[0].item() == pytest.approx(
        0.5981389, abs=1e-6
    )
    lp = torch.tensor([-5.0, -9.0])
    loss, _, _ = preference_loss("sigmoid", lp, lp - 1, lp, lp - 1, 0.1, target=torch.tensor([0.6, 0.9]))
    assert torch.allclose(loss, torch.full((2,), math.log(2)), atol=1e-7)
    with pytest.raises(ValueError, match="sigmoid loss"):
        preference_loss("ipo", *H2, beta=0.1, target=0.8)


@pytest.mark.parametrize("margin", [0.5, math.log(4), 3.0])
def test_soft_labels_are_least_at_the_judges_log_odds(margin):
    """With target t the loss's gradient in the margin z = beta h is sigmoid(z) - t: zero at z = logit(t) (here
    logit(0.8) = ln 4), pushing the margin up below it and down above it; DPO's (t = 1) pushes it up everywhere."""
    z = torch.tensor([margin], requires_grad=True)
    zero = torch.zeros(1)
    loss, _, _ = dpo_sigmoid_loss(z, zero, zero, zero, beta=1.0, target=0.8)
    loss.sum().backward()
    expected = 1 / (1 + math.exp(-margin)) - 0.8
    assert z.grad.item() == pytest.approx(expected, abs=1e-6)
    if margin == 3.0:
        assert z.grad.item() > 0  # above the judge's odds the margin is pulled back
    z.grad = None
    dpo_sigmoid_loss(z, zero, zero, zero, beta=1.0)[0].sum().backward()
    assert z.grad.item() < 0
