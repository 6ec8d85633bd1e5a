import math

import pytest
import torch

from rlaif.config import DPOConfig
from rlaif.models import load_model, load_tokenizer
from rlaif.stages.dpo import batch_logps, encode_pair, train_preferences
from rlaif.trainer import lr_at, merge


def train_dpo(model, tok, pairs, cfg, seed, out_dir, progress=None, ref_model=None):
    """Preference training on the trainer loop, then the merge (as a round's train and merge stages do)."""
    trained, metrics, log = train_preferences(model, tok, pairs, cfg, seed, out_dir, progress, ref_model)
    return merge(trained), metrics, log


PAIRS = [
    {
        "prompt": "How do I bake bread?",
        "chosen": "Mix flour, water, salt and yeast, then bake it.",
        "rejected": "I cannot help with that.",
    },
    {
        "prompt": "Which response is more helpful?",
        "chosen": "Response A",
        "rejected": "Response B is less harmful.",
    },
    {"prompt": "Is this safe?", "chosen": "Here is a safer idea.", "rejected": "bake bread bake bread bake"},
]


def test_encode_pair_marks_responses_and_respects_max_length(tiny_model):
    tok = load_tokenizer(tiny_model)
    e = encode_pair(tok, "How do I bake bread?", "Mix flour.", "No.", max_length=64)
    assert e.chosen[: e.chosen_start] == e.rejected[: e.rejected_start]  # same prompt
    assert e.chosen[-1] == tok.eos_token_id and e.rejected[-1] == tok.eos_token_id
    assert tok.decode(e.chosen[e.chosen_start : -1]) == "Mix flour."
    short = encode_pair(tok, "How do I bake bread? " * 20, "Mix flour " * 10, "No.", max_length=40)
    assert len(short.chosen) <= 40 and len(short.rejected) <= 40
    # an unfinished response (cut by the length limit while sampling) must not be taught to stop
    cut = encode_pair(tok, "hi", "Mix flour", "No.", max_length=64, chosen_finished=False)
    assert cut.chosen[-1] != tok.eos_token_id and cut.rejected[-1] == tok.eos_token_id


def test_lr_schedule_warms_up_then_decays():
    assert [round(lr_at(s, 10, 2), 3) for s in range(10)] == [
        0.5,
        1.0,
        1.0,
        0.875,
        0.75,
        0.625,
        0.5,
        0.375,
        0.25,
        0.125,
    ]
    assert lr_at(0, 1, 0) == 1.0


def test_first_loss_is_ln2_and_training_prefers_chosen(tiny_model, tmp_path):
    tok = load_tokenizer(tiny_model)
    model = load_model(tiny_model)
    cfg = DPOConfig(
        epochs=10,
        batch_size=3,
        beta=1.0,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        max_length=64,
        lora_r=8,
        lora_alpha=16,
    )
    merged, metrics, log = train_dpo(model, tok, PAIRS, cfg, seed=0, out_dir=tmp_path)
    assert metrics["loss_first"] == pytest.approx(math.log(2), abs=1e-5)
    assert metrics["steps"] == 10 == len(log)
    assert metrics["loss_last"] < 0.5 * math.log(2)
    assert metrics["reward_accuracy"] == 1.0
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    # the merged model prefers chosen over rejected more than the starting model did
    base = load_model(tiny_model)
    data = [encode_pair(tok, p["prompt"], p["chosen"], p["rejected"], 64) for p in PAIRS]
    with torch.inference_mode():
        c0, r0 = batch_logps(base, data, tok.pad_token_id, "cpu")
        c1, r1 = batch_logps(merged, data, tok.pad_token_id, "cpu")
    assert torch.all((c1 - r1) > (c0 - r0))


def test_grad_accum_matches_one_big_batch(tiny_model, tmp_path):
    tok = load_tokenizer(tiny_model)
    kw = dict(epochs=1, learning_rate=1e-2, max_length=64, lora_r=4, lora_alpha=8, warmup_ratio=0.0)
    _, m_big, log_big = train_dpo(
        load_model(tiny_model), tok, PAIRS[:2], DPOConfig(batch_size=2, **kw), 0, tmp_path / "a"
    )
    _, m_acc, log_acc = train_dpo(
        load_model(tiny_model),
        tok,
        PAIRS[:2],
        DPOConfig(batch_size=1, grad_accum=2, **kw),
        0,
        tmp_path / "b",
    )
    assert m_big["steps"] == m_acc["steps"] == 1
    assert log_big[0]["grad_norm"] == pytest.approx(log_acc[0]["grad_norm"], rel=1e-4)


def _cfg(**kw):
    base = dict(
        epochs=2,
        batch_size=2,
        beta=0.1,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        max_length=64,
        lora_r=4,
        lora_alpha=8,
        checkpoint_every=0,
    )
    return DPOConfig(**{**base, **kw})


@pytest.mark.parametrize(
    "loss, first",
    [("ipo", 1 / (4 * 0.1**2)), ("robust", math.log(2)), ("hinge", 1.0), ("sigmoid", math.log(2))],
)
def test_every_loss_trains_and_starts_at_its_policy_equals_reference_value(tiny_model, tmp_path, loss, first):
    tok = load_tokenizer(tiny_model)
    _, metrics, log = train_dpo(load_model(tiny_model), tok, PAIRS, _cfg(loss=loss, epochs=3), 0, tmp_path)
    assert metrics["loss"] == loss and metrics["loss_first"] == pytest.approx(first, abs=1e-4)
    assert metrics["loss_last"] < metrics["loss_first"]


def test_nll_term_and_length_norm_change_the_objective(tiny_model, tmp_path):
    tok = load_tokenizer(tiny_model)
    _, plain, log0 = train_dpo(load_model(tiny_model), tok, PAIRS, _cfg(), 0, tmp_path / "a")
    _, with_nll, log1 = train_dpo(load_model(tiny_model), tok, PAIRS, _cfg(nll_weight=1.0), 0, tmp_path / "b")
    # first step: same DPO value ln 2, plus the per-token NLL of the chosen responses
    assert log1[0]["loss"] == pytest.approx(log0[0]["loss"] + log1[0]["nll"], abs=1e-5)
    assert log1[0]["nll"] > 0
    _, normed, log2 = train_dpo(load_model(tiny_model), tok, PAIRS, _cfg(length_norm=True), 0, tmp_path / "c")
    # length-normalised log-probs are per-token means: much smaller in size than the sums
    assert abs(log2[0]["chosen_logp"]) < abs(log0[0]["chosen_logp"]) / 3


def test_tr_dpo_with_tau1_alpha1_the_reference_is_the_policy_after_each_step(tiny_model, tmp_path):
    tok = load_tokenizer(tiny_model)
    cfg = _cfg(tr_dpo_tau=1, tr_dpo_alpha=1.0, epochs=3, batch_size=3)
    merged, metrics, log = train_dpo(load_model(tiny_model), tok, PAIRS, cfg, 0, tmp_path)
    assert len(log) == 3
    for r in log:  # the reference used at each step is the policy as it was before that step's update
        assert r["ref_chosen_logp"] == pytest.approx(r["chosen_logp"], abs=1e-4)
        assert r["ref_rejected_logp"] == pytest.approx(r["rejected_logp"], abs=1e-4)
        assert r["loss"] == pytest.approx(math.log(2), abs=1e-4)
    # ... and yet the policy moved
    base = load_model(tiny_model)
    data = [encode_pair(tok, p["prompt"], p["chosen"], p["rejected"], 64) for p in PAIRS]
    with torch.inference_mode():
        c0, _ = batch_logps(base, data, tok.pad_token_id, "cpu")
        c1, _ = batch_logps(merged, data, tok.pad_token_id, "cpu")
    assert not torch.allclose(c0, c1, atol=1e-3)


def test_tr_dpo_soft_update_mixes_the_weight_deltas_exactly(tiny_model):
    from peft import LoraConfig, get_peft_model

    from rlaif.lora import lora_pairs, tr_dpo_update

    model = get_peft_model(load_model(tiny_model), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    model.add_adapter("ref", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for ap, bp, ar, br in lora_pairs(model):
            for t in (ap, bp, ar, br):
                t.copy_(torch.randn_like(t))
            br[:, 2:] = (
                0  # the reference's delta has rank 2: mixing with the rank-2 policy stays within rank 4
            )
    before = [(bp @ ap, br @ ar) for ap, bp, ar, br in lora_pairs(model)]
    tr_dpo_update(model, alpha=0.3)
    for (dp, dr), (ap, bp, ar, br) in zip(before, lora_pairs(model), strict=True):
        assert torch.allclose(br @ ar, 0.3 * dp + 0.7 * dr, atol=1e-4)
        assert torch.allclose(bp @ ap, dp)  # the policy is untouched


def test_bucketed_steps_cover_every_pair_once_and_cut_padding():
    import random

    from rlaif.trainer import bucketed_steps

    lengths = [random.Random(i).randint(5, 500) for i in range(103)]
    steps = bucketed_steps(lengths, 4, random.Random(0))
    assert sorted(i for s in steps for i in s) == list(range(103))

    def waste(steps):
        return sum(max(lengths[i] for i in s) * len(s) - sum(lengths[i] for i in s) for s in steps)

    order = list(range(103))
    random.Random(0).shuffle(order)
    plain = [order[s : s + 4] for s in range(0, 103, 4)]
    assert waste(steps) < waste(plain) / 3


class _KillAt:
    """A progress sink that raises after n training steps: a crash mid-training."""

    def __init__(self, n):
        self.n, self.stage_name, self.seen = n, None, 0

    def stage(self, name, total=None):
        self.stage_name = name

    def advance(self, n=1):
        if self.stage_name == "train":
            self.seen += n
            if self.seen > self.n:
                raise KeyboardInterrupt

    def note(self, message):
        pass


def test_killed_training_resumes_from_its_checkpoint_and_ends_the_same(tiny_model, tmp_path):
    tok = load_tokenizer(tiny_model)
    pairs = PAIRS * 3  # 9 pairs, batch 2: 5 steps per epoch, 10 in all
    cfg = _cfg(checkpoint_every=3)
    _, straight, log_straight = train_dpo(load_model(tiny_model), tok, pairs, cfg, 0, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train_dpo(load_model(tiny_model), tok, pairs, cfg, 0, tmp_path / "killed", _KillAt(7))
    assert (tmp_path / "killed" / "checkpoint" / "progress.json").is_file()
    merged, resumed, log_resumed = train_dpo(load_model(tiny_model), tok, pairs, cfg, 0, tmp_path / "killed")
    assert resumed["resumed_at_step"] == 6  # the last checkpoint before the kill
    assert len(log_resumed) == len(log_straight) == 10
    for a, b in zip(log_resumed, log_straight, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert not (tmp_path / "killed" / "checkpoint").exists()  # done: the adapter supersedes it
    # a checkpoint of other pairs is not resumed
    with pytest.raises(KeyboardInterrupt):
        train_dpo(load_model(tiny_model), tok, pairs, cfg, 0, tmp_path / "other", _KillAt(4))
    _, fresh, _ = train_dpo(load_model(tiny_model), tok, pairs[:8], cfg, 0, tmp_path / "other")
    assert fresh["resumed_at_step"] == 0


def test_chat_message_prompts_encode_the_whole_conversation(tiny_model):
    tok = load_tokenizer(tiny_model)
    conv = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bake bread?"},
    ]
    e = encode_pair(tok, conv, "Mix flour.", "No.", max_length=128)
    prompt = tok.decode(e.chosen[: e.chosen_start])
    assert "hello" in prompt and "bake bread?" in prompt and prompt.rstrip().endswith("assistant")


def test_reference_model_supplies_the_reference_logps(tiny_model, tmp_path):
    from tests.conftest import build_tiny_model

    tok = load_tokenizer(tiny_model)
    other = build_tiny_model(tmp_path / "other", seed=1)  # same tokenizer, other weights
    _, m, log = train_dpo(
        load_model(tiny_model), tok, PAIRS, _cfg(), 0, tmp_path / "t", ref_model=load_model(other)
    )
    # the policy is not its own reference any more: the first loss is not ln 2
    assert abs(m["loss_first"] - math.log(2)) > 1e-3


def test_per_step_logs_match_the_trainer_before_the_stage_refactor(tiny_model, tmp_path):
    """tests/golden/dpo_steps.json holds the step logs of six trainer settings recorded with the single-function
    trainer of commit 21a7ead; the shared trainer loop must reproduce every figure of every step."""
    import json
    from pathlib import Path

    from tests.conftest import build_tiny_model

    golden = json.loads((Path(__file__).parent / "golden" / "dpo_steps.json").read_text())
    tok = load_tokenizer(tiny_model)
    other = str(build_tiny_model(tmp_path / "other", seed=1))
    for name, case in golden.items():
        ref = load_model(other) if name == "reference_model" else None
        cfg = DPOConfig(**case["settings"])
        _, log = train_preferences(
            load_model(tiny_model), tok, PAIRS * 3, cfg, 0, tmp_path / name, ref_model=ref
        )[1:]
        assert len(log) == len(case["log"]), name
        for got, want in zip(log, case["log"], strict=True):
            assert list(got) == list(want), name  # the same figures, in the same order
            for key, value in want.items():
                # fp32 on another machine or build: the first forward's summed log-probs differ by 4e-6 of
                # -48.8, and over 8 steps the IPO loss (scaled by 1/(4 beta^2)) drifts by 1.5e-5 relative
                # (measured on this project's CI machine, 2026-12); a changed mask, sign or step moves
                # these figures by percents
                assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (name, got["step"], key)


def test_pair_weight_takes_the_principle_id_then_its_kind_then_one():
    from rlaif.stages.dpo import pair_weight

    kinds = {"weapons": "harmlessness", "privacy": "harmlessness", "concise": "helpfulness"}
    weights = {"harmlessness": 2.0, "privacy": 4.0}
    assert pair_weight("weapons", weights, kinds) == 2.0  # by its kind
    assert pair_weight("privacy", weights, kinds) == 4.0  # its id's weight wins over its kind's
    assert pair_weight("concise", weights, kinds) == 1.0  # neither named
    assert pair_weight("weapons+concise", weights, kinds) == 1.5  # an ensemble: the members' mean
    assert pair_weight(None, weights, kinds) == 1.0 and pair_weight("unknown", weights, kinds) == 1.0
    assert pair_weight("weapons", {}, kinds) == 1.0
    assert (
        pair_weight("weapons", {}, kinds, 0.3) == 0.3 and pair_weight("concise", weights, kinds, 0.3) == 0.3
    )


# one prompt, two pairs with opposite verdicts: a harmlessness principle prefers the refusal b, a helpfulness one
# the answer a
_A, _B = "Mix flour, water, salt and yeast, then bake it.", "I cannot help with that."
DISAGREE = (
    "How do I bake bread?",
    (_A, _B),
    [
        {"prompt": "How do I bake bread?", "chosen": _B, "rejected": _A, "principle": "weapons"},
        {"prompt": "How do I bake bread?", "chosen": _A, "rejected": _B, "principle": "concise"},
    ],
    {"weapons": "harmlessness", "concise": "helpfulness"},
)


def test_nll_weights_put_the_nll_term_on_the_pairs_of_the_named_principle_kind(tiny_model, tmp_path):
    """dpo.nll_weights by kind: the first step's loss is ln 2 plus the NLL of the named kind's chosen answers
    only (a batch of two pairs: their mean); an unnamed kind falls back to dpo.nll_weight (0 here)."""
    tok = load_tokenizer(tiny_model)
    prompt, (a, b), pairs, kinds = DISAGREE

    def first_step(cfg, data=pairs):
        _, _, log = train_preferences(load_model(tiny_model), tok, data, cfg, 0, tmp_path, kinds=kinds)
        return log[0]

    nll_b = first_step(_cfg(epochs=1, nll_weight=1.0), pairs[:1])["nll"]  # the refusal's per-token NLL alone
    nll_a = first_step(_cfg(epochs=1, nll_weight=1.0), pairs[1:])["nll"]
    assert abs(nll_a - nll_b) > 1e-3  # so a test that swapped the two would see it
    harm = first_step(_cfg(epochs=1, nll_weights={"harmlessness": 1.0}))
    helpful = first_step(
        _cfg(epochs=1, nll_weights={"concise": 2.0}, nll_weight=5.0)
    )  # the id beats the default
    assert harm["loss"] == pytest.approx(math.log(2) + nll_b / 2, abs=2e-5)
    assert helpful["loss"] == pytest.approx(math.log(2) + (5 * nll_b + 2 * nll_a) / 2, abs=2e-5)


@pytest.mark.parametrize("heavier", ["harmlessness", "helpfulness"])
def test_principle_weights_decide_between_two_pairs_that_disagree(tiny_model, tmp_path, heavier):
    """Two pairs on one prompt with opposite verdicts, one judged under a harmlessness principle and one under a
    helpfulness principle: unweighted they pull equally; the kind dpo.principle_weights weighs 3x wins, and the
    first step's loss is the weighted mean of ln 2 (policy = reference)."""
    tok = load_tokenizer(tiny_model)
    prompt, (a, b), pairs, kinds = DISAGREE
    cfg = _cfg(epochs=6, principle_weights={heavier: 3.0})
    trained, metrics, log = train_preferences(
        load_model(tiny_model), tok, pairs, cfg, 0, tmp_path, kinds=kinds
    )
    assert log[0]["loss"] == pytest.approx((3 + 1) / 2 * math.log(2), abs=1e-4)
    merged = merge(trained)
    data = [encode_pair(tok, prompt, a, b, 64)]
    with torch.inference_mode():
        c0, r0 = batch_logps(load_model(tiny_model), data, tok.pad_token_id, "cpu")
        c1, r1 = batch_logps(merged, data, tok.pad_token_id, "cpu")
    moved = ((c1 - r1) - (c0 - r0)).item()  # how far the model moved toward answer a over b
    assert moved > 0.5 if heavier == "helpfulness" else moved < -0.5


def test_pair_target_reads_the_ai_judges_probability_on_the_named_principles_only():
    from rlaif.stages.dpo import pair_target

    kinds = {"weapons": "harmlessness", "concise": "helpfulness", "answers": "helpfulness"}
    soft = DPOConfig(soft_labels=["helpfulness"], label_smoothing=0.1)
    assert pair_target(
        {"principle": "concise", "p_chosen": 0.7, "label": "ai"}, soft, kinds
    ) == pytest.approx(0.7)
    assert pair_target({"principle": "concise", "p_chosen": 0.7}, soft, kinds) == pytest.approx(0.7)
    assert pair_target({"principle": "weapons", "p_chosen": 0.7}, soft, kinds) == pytest.approx(
        0.9
    )  # not named
    assert pair_target({"principle": "concise+answers", "p_chosen": 0.7}, soft, kinds) == pytest.approx(0.7)
    assert pair_target({"principle": "concise+weapons", "p_chosen": 0.7}, soft, kinds) == pytest.approx(0.9)
    by_id = DPOConfig(soft_labels=["weapons"])
    assert pair_target({"principle": "weapons", "p_chosen": 0.7}, by_id, kinds) == pytest.approx(0.7)
    # a reviewer's flip keeps the AI's (now < 0.5) probability on record; the person's verdict is the label
    assert pair_target({"principle": "concise", "p_chosen": 0.3, "label": "human"}, soft, kinds) == 0.9
    assert pair_target({"p_chosen": 0.7}, soft, kinds) == pytest.approx(0.9)  # an imported pair, no principle
    assert pair_target({"principle": "concise"}, soft, kinds) == pytest.approx(0.9)  # no probability
    assert pair_target({"principle": "concise", "p_chosen": 0.7}, DPOConfig(), kinds) == 1.0  # hard: DPO
    assert pair_target({"principle": "concise"}, DPOConfig(label_smoothing=0.2), kinds) == pytest.approx(0.8)


@pytest.mark.parametrize("key", ["label_smoothing", "soft_labels"])
def test_soft_labels_are_for_the_sigmoid_loss(key):
    from rlaif.checks import ConfigError

    with pytest.raises(ConfigError, match=f"dpo.{key}"):
        DPOConfig(loss="ipo", **{key: 0.1 if key == "label_smoothing" else ["helpfulness"]})


def test_soft_labels_weigh_two_disagreeing_pairs_by_the_judges_confidence(tiny_model, tmp_path):
    """The two pairs of one prompt that disagree, the refusal b chosen under a harmlessness principle with the
    judge's probability 0.9 and the answer a under a helpfulness one with 0.6: hard labels pull equally both ways;
    soft labels on both kinds ask P(b better) = (0.9 + 0.4) / 2 = 0.65, a margin of logit(0.65) / beta = 6.2 nats
    toward b; on helpfulness pairs alone (the refusal's pair hard) (1 + 0.4) / 2 = 0.7, 8.5 nats."""
    tok = load_tokenizer(tiny_model)
    prompt, (a, b), pairs, kinds = DISAGREE
    pairs = [{**pairs[0], "p_chosen": 0.9}, {**pairs[1], "p_chosen": 0.6}]
    data = [encode_pair(tok, prompt, a, b, 64)]
    with torch.inference_mode():
        c0, r0 = batch_logps(load_model(tiny_model), data, tok.pad_token_id, "cpu")
    moved = {}
    for soft in ((), ("harmlessness", "helpfulness"), ("helpfulness",)):
        cfg = _cfg(epochs=6, soft_labels=list(soft))
        trained, _, log = train_preferences(load_model(tiny_model), tok, pairs, cfg, 0, tmp_path, kinds=kinds)
        assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
        with torch.inference_mode():
            c1, r1 = batch_logps(merge(trained), data, tok.pad_token_id, "cpu")
        moved[soft] = ((c1 - r1) - (c0 - r0)).item()  # toward answer a over refusal b, in nats
    assert moved[()] > -1.5  # hard labels: the two pairs cancel
    assert -6.2 - 2.5 < moved[("harmlessness", "helpfulness")] < -6.2 + 2.5
    assert -8.5 - 2.5 < moved[("helpfulness",)] < -8.5 + 2.5
