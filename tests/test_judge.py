import math

import pytest

from rlaif.config import JudgeConfig
from rlaif.judge import Judge, TransformersScorer
from rlaif.judge.prompts import build_messages, option_token_ids, render
from rlaif.principles import load_constitution
from rlaif.verdicts import decide, logit, position_bias, sigmoid
from tests.conftest import judge_items


def test_render_does_not_rescan_values():
    out = render(
        "Q: {question}\nA: {response_a}\nB: {response_b}",
        {
            "question": "which?",
            "response_a": "pick me {response_b}",
            "response_b": "plain",
            "conversation": "",
        },
    )
    assert out == "Q: which?\nA: pick me {response_b}\nB: plain"


def test_build_messages_puts_responses_in_their_slots():
    c = load_constitution("default")
    p = c.by_id("weapons")
    msgs, prefix = build_messages(c.template, p, "User: hi", "FIRST-TEXT", "SECOND-TEXT")
    user = msgs[-1]["content"]
    assert p.question in user and "User: hi" in user
    assert user.index("FIRST-TEXT") < user.index("SECOND-TEXT")
    assert "[Response A]\nFIRST-TEXT\n[End of response A]" in user
    assert prefix == c.template.answer_prefix


def test_order_averaging_cancels_a_constant_position_bias():
    # The judge leans to the second slot by 2 log-odds; underneath, x is better by 0.8 log-odds.
    lean, signal = -2.0, 0.8
    p_xy = sigmoid(lean + signal)  # x first
    p_yx = sigmoid(lean - signal)  # y first
    # raw: both orders pick the second slot -> inconsistent
    raw = decide("p", p_xy, p_yx, bias=0.0, min_confidence=0.5, require_consistent=True)
    assert not raw.consistent and raw.winner is None and raw.reason == "inconsistent"
    # calibrated with the batch's mean lean: consistent, x wins
    bias = position_bias([(p_xy, p_yx)])
    assert bias == pytest.approx(lean)
    v = decide("p", p_xy, p_yx, bias=bias, min_confidence=0.55, require_consistent=True)
    assert v.consistent_calibrated and v.winner == "x" and v.kept
    assert v.p_x == pytest.approx(sigmoid(signal))
    # swapping x and y mirrors the verdict exactly
    w = decide("p", p_yx, p_xy, bias=bias, min_confidence=0.55, require_consistent=True)
    assert w.winner == "y" and w.p_x == pytest.approx(1 - v.p_x)


def test_uncertain_and_inconsistent_are_dropped_with_reason():
    assert decide("p", 0.52, 0.49, 0.0, 0.55, True).reason == "uncertain"
    assert decide("p", 0.9, 0.9, 0.0, 0.55, True).reason == "inconsistent"
    # not requiring consistency: the averaged probability alone decides
    v = decide("p", 0.9, 0.8, 0.0, 0.5, False)
    assert v.winner == "x" and v.p_x == pytest.approx(0.55)
    assert decide("p", 0.5, 0.5, 0.0, 0.5, False).reason == "uncertain"


def test_logit_sigmoid_inverse():
    for p in (0.01, 0.3, 0.5, 0.93):
        assert sigmoid(logit(p)) == pytest.approx(p)
    assert math.isfinite(logit(0.0)) and math.isfinite(logit(1.0))


def test_option_tokens_and_batched_probs_match_single(tiny_model):
    from rlaif.models import load_model, load_tokenizer

    tok = load_tokenizer(tiny_model)
    model = load_model(tiny_model)
    c, items = judge_items()
    a, b = option_token_ids(tok, c.template.answer_prefix, c.template.options)
    assert a != b
    judge = Judge(TransformersScorer(model, tok, 4), tok, c, JudgeConfig(mode="logprob"))
    verdicts = judge.judge(items)
    # every item judged alone (batch of one, no padding) gives the same per-order probabilities
    solo = Judge(TransformersScorer(model, tok, 1), tok, c, JudgeConfig(mode="logprob"))
    for it, v in zip(items, verdicts, strict=True):
        (s,) = solo.judge([it])
        assert s.p_first_xy == pytest.approx(v.p_first_xy, abs=1e-4)
        assert s.p_first_yx == pytest.approx(v.p_first_yx, abs=1e-4)
        assert 0 < v.option_mass <= 1
    assert len({v.bias for v in verdicts}) == 1
