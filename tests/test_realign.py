"""DeRa's mixed logits and sampling loop, and best-of-n."""

import json

import pytest
import torch

from rlaif.config import JudgeConfig
from rlaif.judge import Judge, TransformersScorer
from rlaif.judge.ranking import best_of_n
from rlaif.models import load_model, load_tokenizer
from rlaif.principles import load_constitution
from rlaif.realign import mixed_logits, realigned_generate, realigned_tokens
from tests.conftest import build_tiny_model


def test_mixed_logits_endpoints_are_exact_and_lambda_interpolates():
    a = torch.randn(3, 50)
    r = torch.randn(3, 50)
    assert torch.equal(mixed_logits(a, r, 0.0), r)
    assert torch.equal(mixed_logits(a, r, 1.0), a)
    assert torch.allclose(mixed_logits(a, r, 0.5), (a + r) / 2)
    assert torch.allclose(mixed_logits(a, r, 2.0), 2 * a - r)  # extrapolation past the aligned model


def _noisy(path, seed):
    """A freshly initialised tiny model repeats its last token under greedy decoding (tied embeddings, small
    weights); larger random weights give it varied outputs, so decoding paths can be told apart."""
    model = load_model(path)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("dera")
    return _noisy(build_tiny_model(d / "a", seed=0), 0), _noisy(build_tiny_model(d / "b", seed=1), 1)


def _greedy(path, prompts, n):
    from rlaif.generate.hf import encode_prompts, eos_ids

    tok, model = load_tokenizer(path), load_model(path)
    stop = eos_ids(tok, model)
    out = []
    for ids in encode_prompts(tok, prompts, 10_000)[0]:
        g = model.generate(
            torch.tensor([ids]),
            do_sample=False,
            max_new_tokens=n,
            pad_token_id=tok.pad_token_id,
            eos_token_id=None,
        )[0, len(ids) :].tolist()
        end = next((k for k, t in enumerate(g) if t in stop), None)
        out.append(g if end is None else g[: end + 1])
    return tok, out


def test_lambda_0_and_1_decode_exactly_as_the_reference_and_the_aligned_model(two_models):
    aligned_path, ref_path = two_models
    prompts = ["How do I bake bread?", "hi", "Is this safe? Answer with a single letter: A or B."]
    tok, want_aligned = _greedy(aligned_path, prompts, 10)
    _, want_ref = _greedy(ref_path, prompts, 10)
    assert want_aligned != want_ref and max(len(w) for w in want_aligned) > 3  # the test can tell them apart
    aligned, ref = load_model(aligned_path), load_model(ref_path)
    for lam, want in ((1.0, want_aligned), (0.0, want_ref)):
        # batched with left padding and a KV cache per model, yet the same tokens as each model alone
        got = realigned_tokens(
            aligned, ref, tok, prompts, lam, max_new_tokens=10, temperature=0, batch_size=2
        )
        assert [g for g, _ in got] == want
    # lambda 0.5: the first greedy token is the argmax of the two models' averaged next-token logits
    from rlaif.generate.hf import encode_prompts

    mid = realigned_tokens(aligned, ref, tok, prompts, 0.5, max_new_tokens=1, temperature=0)
    firsts = []
    for ids in encode_prompts(tok, prompts, 10_000)[0]:
        with torch.inference_mode():
            h = [m(input_ids=torch.tensor([ids])).logits[0, -1] for m in (aligned, ref)]
        firsts.append(int(((h[0] + h[1]) / 2).argmax()))
    assert [g[0] for g, _ in mid] == firsts


def test_sampling_is_seeded(two_models):
    aligned_path, ref_path = two_models
    tok, aligned, ref = load_tokenizer(aligned_path), load_model(aligned_path), load_model(ref_path)
    a = realigned_generate(aligned, ref, tok, ["hi", "bake?"], 1.5, max_new_tokens=8, seed=3)
    b = realigned_generate(aligned, ref, tok, ["hi", "bake?"], 1.5, max_new_tokens=8, seed=3)
    assert [s.text for s in a] == [s.text for s in b]


def test_best_of_n_returns_the_response_the_judge_ranks_first(tiny_model):
    tok, model = load_tokenizer(tiny_model), load_model(tiny_model)
    c = load_constitution("default")
    judge = Judge(TransformersScorer(model, tok, 8), tok, c, JudgeConfig(mode="pointwise"))
    prompts = ["How do I bake bread?", "Say hello."]
    cands = [
        ["Mix flour.", "I cannot help.", "bake bake bake", "Here is a safer idea."],
        ["hello", "Response B"],
    ]
    picks = best_of_n(judge, c, prompts, cands, seed=0)
    for i, (best, scores) in enumerate(picks):
        # pointwise: the ranking follows each candidate's own P(Yes), scored alone
        import random

        principles = c.sample_k(random.Random(f"0:best-of-n:{i}"), 1)
        alone = judge.judge(
            [
                {"conversation": f"User: {prompts[i]}", "x": x, "y": cands[i][0], "principles": principles}
                for x in cands[i]
            ]
        )
        own = [v.score_x for v in alone]
        assert best == max(range(len(own)), key=lambda k: own[k])
        assert scores[best] == max(scores)


def test_cli_sample_realign_writes_jsonl(tiny_run, tmp_path):
    from rlaif.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n" + json.dumps({"prompt": "bake?"}) + "\n")
    out = tmp_path / "s.jsonl"
    args = ["sample", "--run", str(tiny_run), "--round", "0", "--prompts", str(prompts), "--realign", "0.5"]
    assert main(args + ["--max-new-tokens", "6", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["realign"] == 0.5 for r in rows)
    assert (
        main(["sample", "--run", str(tiny_run), "--round", "3", "--prompts", str(prompts)]) == 2
    )  # no round 3
