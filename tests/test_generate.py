"""The transformers generator: batching must not change what a prompt gets; log-probs are the model's own."""

import json
import math

import pytest
import torch

from rlaif.cli import main
from rlaif.config import GenerateConfig, ModelConfig
from rlaif.generate.hf import TransformersGenerator, chat_prompt, token_logprobs
from rlaif.models import load_model, load_tokenizer


def test_samples_are_complete_seeded_and_carry_logprobs(tiny_model):
    cfg = GenerateConfig(max_new_tokens=10, batch_size=4, temperature=1.0, top_p=1.0)
    gen = TransformersGenerator(tiny_model, cfg, ModelConfig(policy=tiny_model))
    prompts = ["How do I bake bread?", "Say hello.", "Which response is less harmful? " * 3]
    out = gen.generate(prompts, n=2, seed=3)
    assert [len(g) for g in out] == [2, 2, 2]
    for group in out:
        for s in group:
            assert 0 <= s.tokens <= 10
            assert s.finished or s.tokens == 10
            assert len(s.logprobs) == s.tokens + s.finished
            assert all(lp <= 0 and math.isfinite(lp) for lp in s.logprobs)
    again = gen.generate(prompts, n=2, seed=3)
    assert [[s.text for s in g] for g in again] == [[s.text for s in g] for g in out]


def test_token_logprobs_match_a_plain_forward(tiny_model):
    tok = load_tokenizer(tiny_model)
    model = load_model(tiny_model)
    p1 = tok(chat_prompt(tok, "hi"), add_special_tokens=False).input_ids
    p2 = tok(chat_prompt(tok, "How do I bake bread? Mix flour"), add_special_tokens=False).input_ids
    r1, r2 = [5, 9, 11], [7, 8]
    got = token_logprobs(model, [p1, p2], [r1, r2], tok.pad_token_id, "cpu", chunk=2)
    for p, r, lps in ((p1, r1, got[0]), (p2, r2, got[1])):
        with torch.inference_mode():
            logits = model(torch.tensor([p + r])).logits[0]
        want = [torch.log_softmax(logits[len(p) - 1 + t], -1)[tok_id].item() for t, tok_id in enumerate(r)]
        assert lps == pytest.approx(want, abs=1e-4)


def test_logprobs_recorded_while_sampling_are_the_models_raw_logprobs(tiny_model, tmp_path):
    """They are gathered from the raw logits during generate(), before temperature and top-p; a teacher-forced
    forward over the same tokens gives the same numbers. Without recording, the samples are the same."""
    from rlaif.generate.hf import SampledLogprobs, encode_prompts

    model, tok = load_model(tiny_model), load_tokenizer(tiny_model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # varied outputs, so the check is not on one repeated token
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    ids = encode_prompts(tok, ["How do I bake bread?"], 100)[0][0]
    from transformers import LogitsProcessorList, TemperatureLogitsWarper

    capture = SampledLogprobs()
    torch.manual_seed(0)
    out = model.generate(
        torch.tensor([ids]),
        do_sample=True,
        temperature=1.0,
        top_k=0,
        logits_processor=LogitsProcessorList([capture, TemperatureLogitsWarper(0.5)]),
        max_new_tokens=8,
        eos_token_id=None,
        pad_token_id=tok.pad_token_id,
    )
    new = out[:, len(ids) :]
    got = capture.finish(new)[0].tolist()
    want = token_logprobs(model, [ids], [new[0].tolist()], tok.pad_token_id, "cpu")[0]
    assert len(got) == 8 and got == pytest.approx(want, abs=1e-4)
    # the raw distribution, not the temperature-0.5 one the tokens were drawn from
    with torch.inference_mode():
        first = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)[new[0, 0]].item()
    assert got[0] == pytest.approx(first, abs=1e-4)

    cfg = GenerateConfig(max_new_tokens=8, batch_size=4, temperature=0.7, top_p=0.9)
    model.save_pretrained(tmp_path / "noisy")
    tok.save_pretrained(tmp_path / "noisy")
    path = str(tmp_path / "noisy")
    with_lp = TransformersGenerator(path, cfg, ModelConfig(policy=path)).generate(
        ["hi", "bake?"], n=2, seed=1
    )
    plain = TransformersGenerator(path, cfg, ModelConfig(policy=path), record_logprobs=False).generate(
        ["hi", "bake?"], n=2, seed=1
    )
    assert [[s.text for s in grp] for grp in with_lp] == [[s.text for s in grp] for grp in plain]
    assert all(len(s.logprobs) == s.tokens + s.finished for grp in with_lp for s in grp)
    # the generator records the raw distribution's log-probs, not the temperature-0.7 / top-p-0.9 one it draws from
    prompt_ids = encode_prompts(tok, ["hi", "bake?"], 100)[0]
    for ids, grp in zip(prompt_ids, with_lp, strict=True):
        for s in grp:
            want = token_logprobs(model, [ids], [list(s.token_ids)], tok.pad_token_id, "cpu")[0]
            assert list(s.logprobs) == pytest.approx(want, abs=1e-4)
    assert all(s.logprobs == () for grp in plain for s in grp)


@pytest.mark.parametrize("candidates", [1024, 3])
def test_nucleus_sampler_draws_from_transformers_top_p_set_in_proportion(candidates):
    """The sampler's top-p set is transformers' TopPLogitsWarper's, found by a partial sort (or, with too few
    candidates to reach top_p, a full one), and it draws from that set in proportion to the tempered
    probabilities."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from rlaif.generate.hf import NucleusSampler

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 40, generator=gen) * 0.8
    ref = TopPLogitsWarper(0.8)(None, TemperatureLogitsWarper(0.7)(None, logits.clone()))
    want = torch.softmax(ref, -1)  # zero outside the set
    assert ((want > 0).sum(-1) > 3).all()  # so candidates=3 exercises the full sort
    sampler = NucleusSampler(0.7, 0.8, candidates=candidates)
    torch.manual_seed(1)
    draws = 4000
    counts = torch.zeros_like(logits)
    for _ in range(draws):
        out = sampler(None, logits)
        assert (torch.isfinite(out).sum(-1) == 1).all()
        counts += torch.isfinite(out).float()
    assert ((want == 0) | (want > 0.005)).all()  # every token of the set is drawn in 4000 tries
    assert torch.equal(counts > 0, want > 0)  # the whole set, nothing outside it
    assert (counts / draws - want).abs().max() < 0.03


def test_rounds_take_fresh_prompts_until_every_prompt_had_its_turn():
    from rlaif.stages.generate import select_prompts

    prompts = [{"id": str(i)} for i in range(12)]
    ids = {k: [p["id"] for p in select_prompts(prompts, 4, seed=0, k=k)] for k in range(1, 8)}
    assert all(len(v) == len(set(v)) == 4 for v in ids.values())
    assert sorted(ids[1] + ids[2] + ids[3], key=int) == [str(i) for i in range(12)]  # one pass: a partition
    assert sorted(ids[4] + ids[5] + ids[6], key=int) == [str(i) for i in range(12)]  # the next pass too
    assert [ids[1], ids[2], ids[3]] != [ids[4], ids[5], ids[6]]  # reshuffled
    assert ids[1] == [p["id"] for p in select_prompts(prompts, 4, seed=0, k=1)]  # seeded
    assert ids[1] != [p["id"] for p in select_prompts(prompts, 4, seed=1, k=1)]
    odd = [[p["id"] for p in select_prompts(prompts[:10], 4, seed=0, k=k)] for k in (1, 2, 3)]
    assert all(len(set(v)) == 4 for v in odd) and not set(odd[0]) & set(odd[1])
    assert set(odd[0] + odd[1] + odd[2]) == {str(i) for i in range(10)}
    assert select_prompts(prompts, 0, seed=0, k=3) == prompts


def test_prompts_per_kind_walks_each_named_kind_alone_and_the_rest_by_prompts_per_round():
    from rlaif.stages.generate import select_prompts

    prompts = [{"id": f"h{i}", "kind": "harmful"} for i in range(3)] + [
        {"id": f"b{i}", "kind": "benign"} for i in range(6)
    ]
    prompts += [{"id": f"u{i}"} for i in range(4)]  # no kind: follows per_round
    rounds = {
        k: select_prompts(prompts, 2, seed=0, k=k, per_kind={"benign": 2, "harmful": 0}) for k in range(1, 4)
    }
    for chosen in rounds.values():
        ids = [p["id"] for p in chosen]
        assert [i for i in ids if i[0] == "h"] == ["h0", "h1", "h2"]  # harmful: 0 = every one, every round
        assert len([i for i in ids if i[0] == "b"]) == 2 and len([i for i in ids if i[0] == "u"]) == 2
        assert chosen == [p for p in prompts if p in chosen]  # the file's order
    benign = [p["id"] for k in (1, 2, 3) for p in rounds[k] if p["id"][0] == "b"]
    assert sorted(benign) == [f"b{i}" for i in range(6)]  # fresh each round: three rounds cover the six
    unlabelled = [p["id"] for k in (1, 2) for p in rounds[k] if p["id"][0] == "u"]
    assert sorted(unlabelled) == [f"u{i}" for i in range(4)]
    again = select_prompts(prompts, 2, seed=0, k=1, per_kind={"benign": 2, "harmful": 0})
    assert (
        again == rounds[1]
        and select_prompts(prompts, 2, seed=5, k=1, per_kind={"benign": 2, "harmful": 0}) != rounds[1]
    )
    assert select_prompts(prompts, 0, seed=0, k=2, per_kind={"benign": 0}) == prompts


def test_a_run_takes_every_harmful_prompt_and_fresh_benign_ones_each_round(tiny_run, capsys):
    rows = [{"id": f"h{i}", "kind": "harmful", "prompt": f"How do I hurt person {i}?"} for i in range(2)]
    rows += [{"id": f"b{i}", "kind": "benign", "prompt": f"How do I bake loaf {i}?"} for i in range(4)]
    (tiny_run / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = [
        'round.stages=["generate"]',
        "data.prompts_per_kind={benign = 2}",
    ]
    assert main(["run", str(tiny_run), "--rounds", "2", *sum((["--set", s] for s in sets), [])]) == 0
    taken = [
        {json.loads(line)["prompt_id"] for line in open(tiny_run / f"round_{k}" / "responses.jsonl")}
        for k in (1, 2)
    ]
    assert all({"h0", "h1"} <= t and len(t) == 4 for t in taken)
    assert taken[0] - {"h0", "h1"} | taken[1] - {"h0", "h1"} == {"b0", "b1", "b2", "b3"}
    assert main(["run", str(tiny_run), "--rounds", "3", "--set", "data.prompts_per_kind={benigne = 2}"]) == 2
    assert "data.prompts_per_kind.benigne: no prompt in" in capsys.readouterr().err
    assert not (tiny_run / "round_3").exists()
