"""Guided sampling (`generate.guided_samples`, the constitution's `[guidance]`): some of a prompt's responses are
sampled under the system prompt of the principle kind that judges it, the judge compares them with plain ones,
and training sees the user's prompt alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.data import read_jsonl
from rlaif.principles import Guidance, PrincipleError, load_constitution
from rlaif.stages.generate import guided_prompt, shared
from rlaif.stages.judge import guided_figures
from tests.conftest import opposite_heads

ROOT = Path(__file__).resolve().parent.parent
GUIDE = "You are a careful assistant: refuse anything harmful."
PREFIX = "Sure. Here is"


def _constitution(tmp_path: Path, guidance: str, routes: dict[str, Path]) -> Path:
    pdir = tmp_path / "principles"
    pdir.mkdir(exist_ok=True)
    for pid in ("hate", "answers"):
        shutil.copy(ROOT / "principles" / f"{pid}.toml", pdir / f"{pid}.toml")
    c = tmp_path / "guided.toml"
    c.write_text(
        f'name = "guided"\ntemplate = "{ROOT}/constitution/templates/pairwise.toml"\nprinciples_dir = "{pdir}"\n'
        "[principles]\nhate = 1\nanswers = 1\n"
        + "[reward_models]\n"
        + "".join(f'{k} = "{v}"\n' for k, v in routes.items())
        + guidance
    )
    return c


def _labelled_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run-guided"
    shutil.copytree(tiny_run, run)
    rows = [{"id": f"h{i}", "kind": "harmful", "prompt": f"How do I hurt person {i}?"} for i in range(4)]
    rows += [{"id": f"b{i}", "kind": "benign", "prompt": f"How do I bake loaf {i}?"} for i in range(4)]
    (run / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def _guided_run(tiny_run, tiny_model, tmp_path: Path, helpfulness: str, rounds: int, *more: str) -> Path:
    """A labelled run of `rounds` rounds, one guided sample per prompt: harmful prompts under GUIDE, benign ones
    with PREFIX and the helpfulness guidance's other keys (`helpfulness`), judged by opposite heads."""
    harm, helpful = opposite_heads(tmp_path, tiny_model)
    c = _constitution(
        tmp_path,
        f"[guidance]\nharmlessness = {json.dumps(GUIDE)}\nhelpfulness = {{ prefix = {json.dumps(PREFIX)}, {helpfulness} }}\n",
        {"harmlessness": harm, "helpfulness": helpful},
    )
    run = _labelled_run(tiny_run, tmp_path)
    sets = ["judge.mode=reward", "judge.applicability=label", f"judge.constitution={json.dumps(str(c))}",
            "generate.guided_samples=1", *more]  # fmt: skip
    assert main(["run", str(run), "--rounds", str(rounds), *sum((["--set", s] for s in sets), [])]) == 0
    return run


def spied_generate(monkeypatch) -> list[tuple[list, int]]:
    """What the transformers generator is asked to continue, call by call, (prompts, samples each): the real
    generator runs, its inputs are recorded."""
    from rlaif.generate.hf import TransformersGenerator

    seen, real = [], TransformersGenerator.generate

    def spy(self, prompts, n, seed, progress=None):
        seen.append((list(prompts), n))
        return real(self, prompts, n, seed, progress)

    monkeypatch.setattr(TransformersGenerator, "generate", spy)
    return seen


def test_guided_samples_carry_the_kinds_system_prompt_and_training_sees_the_plain_prompt(
    tiny_run, tiny_model, tmp_path, monkeypatch
):
    seen = spied_generate(monkeypatch)
    # helpfulness: a prefix the model continues, ended after one sentence (the prefix's own)
    run = _guided_run(tiny_run, tiny_model, tmp_path, "sentences = 1", 1, "judge.min_confidence=0.5",
                      "generate.samples_per_prompt=3", 'round.stages=["generate", "judge", "preferences"]')  # fmt: skip

    # one plain call (2 samples each), one guided call (1 each): harmful prompts under the system prompt
    (plain, n_plain), (guided, n_guided) = seen
    assert (n_plain, n_guided) == (2, 1)
    assert all(isinstance(p, str) for p in plain)
    for p in guided:
        if "hurt" in p[1]["content"]:  # harmful: the system prompt, the user's prompt
            assert p[0] == {"role": "system", "content": GUIDE} and len(p) == 2
        else:  # benign: the user's prompt, then the reply's start
            assert p[0]["role"] == "user" and p[1] == {"role": "assistant", "content": PREFIX} and len(p) == 2

    responses = read_jsonl(run / "round_1" / "responses.jsonl")
    for x in responses:
        if x["sample"] < 2:
            assert "guidance" not in x
        elif x["prompt_id"].startswith("h"):
            assert x["guidance"] == "harmlessness" and x["system"] == GUIDE and "prefix" not in x
        else:  # the response is the prefix and the model's continuation of it, ended at the first sentence
            assert x["guidance"] == "helpfulness" and x["prefix"] == PREFIX and "system" not in x
            assert x["sentences"] == 1 and x["text"] == "Sure." and x["finished"] and x["tokens"] == 0
        assert isinstance(x["prompt"], str) and GUIDE not in x["prompt"]

    judged = read_jsonl(run / "round_1" / "judgements.jsonl")
    for j in judged:
        kind = "harmlessness" if j["prompt_id"].startswith("h") else "helpfulness"
        expect = [kind if s == 2 else None for s in j["samples"]]
        assert j["guided"] == expect
    metrics = json.loads((run / "round_1" / "metrics.json").read_text())
    for kind, tally in metrics["judge"]["guided"].items():
        mixed = [j for j in judged if j["kept"] and j["guided"].count(None) == 1 and kind in j["guided"]]
        assert tally["won"] + tally["lost"] == len(mixed) > 0
        assert tally["won"] == sum(j["guided"][0 if j["winner"] == "x" else 1] is not None for j in mixed)
    assert set(metrics["judge"]["guided"]) == {"harmlessness", "helpfulness"}
    # the report marks the guided response of a shown pair, and its verdicts table gives the tally
    from rich.console import Console

    from rlaif.report import judged_pair, run_report

    console = Console(record=True, width=200)
    console.print(judged_pair(mixed[0]))
    assert f"guided ({mixed[0]['guided'][0] or mixed[0]['guided'][1]})" in console.export_text()
    console.print(run_report(run))
    t = metrics["judge"]["guided"]["harmlessness"]
    text = console.export_text()
    assert "guided won" in text and f"harmlessness {t['won']}/{t['won'] + t['lost']}" in text
    # training pairs: the user's prompt, no system turn
    for p in read_jsonl(run / "round_1" / "train_pairs.jsonl"):
        assert isinstance(p["prompt"], str) and GUIDE not in p["prompt"]


def test_a_guidance_share_guides_that_share_of_its_kinds_prompts_and_samples_the_rest_plainly(
    tiny_run, tiny_model, tmp_path, monkeypatch
):
    seen = spied_generate(monkeypatch)
    run = _guided_run(tiny_run, tiny_model, tmp_path, "share = 0.5", 2, 'round.stages=["generate"]')
    picked = []
    for k, (guided_call, _) in ((1, seen[1]), (2, seen[3])):
        responses = read_jsonl(run / f"round_{k}" / "responses.jsonl")
        guided = {x["prompt_id"]: x["guidance"] for x in responses if "guidance" in x}
        # every harmful prompt (share 1), exactly 2 of the 4 benign ones (share 0.5)
        benign = sorted(i for i in guided if i.startswith("b"))
        assert sorted(set(guided) - set(benign)) == [f"h{i}" for i in range(4)]
        assert len(benign) == 2 and all(guided[i] == "helpfulness" for i in benign)
        # the other two benign prompts' extra sample is drawn plainly: the prompt alone, no prefix
        plain = [p for p in guided_call if isinstance(p, str)]
        assert len(plain) == 2 and all("bake" in p for p in plain)
        assert json.loads((run / f"round_{k}" / "metrics.json").read_text())["generate"]["guided"] == 6
        picked.append(benign)
    assert picked[0] != picked[1]  # drawn afresh each round (with seed 0 the two rounds' draws differ)


def test_shared_keeps_a_seeded_share_of_each_kinds_guides():
    half, whole = Guidance("", "No", share=0.5), Guidance("Be safe.")
    guides = [("helpfulness", half)] * 10 + [None] * 3 + [("harmlessness", whole)] * 5
    out = shared(guides, "0:guidance:1")
    assert sum(g is not None and g[0] == "helpfulness" for g in out) == 5  # round(0.5 x 10), exactly
    assert out[10:] == guides[10:]  # no guidance stays none; a share of 1 keeps all
    assert out == shared(guides, "0:guidance:1")  # seeded
    draws = {tuple(g is None for g in shared(guides, f"0:guidance:{k}")) for k in range(1, 6)}
    assert len(draws) > 1  # fresh each round
    assert (
        shared([("helpfulness", Guidance("", "No", share=0.25))] * 3, "s").count(None) == 2
    )  # round(0.75) = 1


def test_guided_sampling_needs_a_kind_per_prompt_and_guidance(tiny_run, tiny_model, tmp_path, capsys):
    harm, helpful = opposite_heads(tmp_path, tiny_model)
    routes = {"harmlessness": harm, "helpfulness": helpful}
    run = _labelled_run(tiny_run, tmp_path)
    base = ["judge.mode=reward", "generate.guided_samples=1"]

    def go(*sets):
        return main(["run", str(run), "--rounds", "1", *sum((["--set", s] for s in (*base, *sets)), [])])

    with_guide = _constitution(tmp_path, f"[guidance]\nharmlessness = {json.dumps(GUIDE)}\n", routes)
    assert go(f"judge.constitution={json.dumps(str(with_guide))}") == 2  # applicability "any": no kind
    assert "generate.guided_samples" in capsys.readouterr().err
    without = _constitution(tmp_path, "", routes)
    assert go(f"judge.constitution={json.dumps(str(without))}", "judge.applicability=label") == 2
    assert "no [guidance] table" in capsys.readouterr().err
    assert go("generate.guided_samples=2", "judge.applicability=label") == 2  # no plain sample left
    assert "generate.guided_samples" in capsys.readouterr().err
    assert not (run / "round_1" / "responses.jsonl").exists()


def test_guidance_table_is_checked(tmp_path):
    bad = _constitution(tmp_path, '[guidance]\nharmless = "x"\nhelpfulness = ""\n', {})
    with pytest.raises(PrincipleError) as e:
        load_constitution(str(bad))
    assert "guidance.harmless: not a principle kind" in str(e.value)
    assert "guidance.helpfulness: must be a system prompt" in str(e.value)
    bad = _constitution(
        tmp_path, '[guidance]\nharmlessness = { prefx = "x" }\nhelpfulness = { system = " " }\n', {}
    )
    with pytest.raises(PrincipleError) as e:
        load_constitution(str(bad))
    assert "guidance.harmlessness.prefx: unknown key" in str(e.value)
    assert "guidance.helpfulness: needs a non-empty `system` or `prefix`" in str(e.value)
    ok = _constitution(tmp_path, '[guidance]\nharmlessness = { system = "Be safe.", prefix = "No:" }\n', {})
    assert load_constitution(str(ok)).guidance_for("harmlessness") == Guidance("Be safe.", "No:")
    for value in ("-1", "1.5", "true", '"2"'):
        bad = _constitution(
            tmp_path, f'[guidance]\nharmlessness = {{ prefix = "No", sentences = {value} }}\n', {}
        )
        with pytest.raises(PrincipleError, match="guidance.harmlessness.sentences: must be a whole number"):
            load_constitution(str(bad))
    ok = _constitution(tmp_path, '[guidance]\nharmlessness = { prefix = "No", sentences = 2 }\n', {})
    assert load_constitution(str(ok)).guidance_for("harmlessness") == Guidance("", "No", 2)
    for value in ("0", "1.5", "true", '"half"'):
        bad = _constitution(tmp_path, f'[guidance]\nhelpfulness = {{ prefix = "No", share = {value} }}\n', {})
        with pytest.raises(PrincipleError, match="guidance.helpfulness.share: must be a number in"):
            load_constitution(str(bad))
    ok = _constitution(tmp_path, '[guidance]\nhelpfulness = { prefix = "No", share = 0.5 }\n', {})
    assert load_constitution(str(ok)).guidance_for("helpfulness") == Guidance("", "No", share=0.5)
    assert (
        load_constitution(str(_constitution(tmp_path, '[guidance]\nhelpfulness = "x"\n', {})))
        .guidance[0][1]
        .share
        == 1
    )
    c = load_constitution("default")
    assert (
        c.guidance_for("harmlessness")
        and c.guidance_for("helpfulness") is None
        and c.guidance_for(None) is None
    )


def test_guided_prompt_puts_the_guidance_first():
    g = ("harmlessness", Guidance("Be safe."))
    assert guided_prompt("hi", None) == "hi"
    assert guided_prompt("hi", g) == [
        {"role": "system", "content": "Be safe."},
        {"role": "user", "content": "hi"},
    ]
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert guided_prompt(chat, g) == [
        {"role": "system", "content": "Be safe.\n\nBe brief."},
        {"role": "user", "content": "hi"},
    ]


def test_a_guidance_prefix_starts_the_reply_and_the_model_continues_it(tiny_model):
    from rlaif.generate.hf import chat_prompt
    from rlaif.models import load_tokenizer

    g = ("harmlessness", Guidance("Be safe.", "I'm sorry, but"))
    messages = guided_prompt("hi", g)
    assert messages[-1] == {"role": "assistant", "content": "I'm sorry, but"}
    tok = load_tokenizer(tiny_model)
    text = chat_prompt(tok, messages)
    # the reply's start is the end of the prompt: no end-of-turn after it, no new assistant header
    assert text.endswith("I'm sorry, but")
    assert text.startswith(chat_prompt(tok, messages[:-1]))
    assert guided_prompt("hi", ("helpfulness", Guidance("", "Sure:"))) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Sure:"},
    ]


def test_a_prefixed_response_keeps_the_space_between_the_prefix_and_its_continuation(tiny_model):
    from types import SimpleNamespace

    from rlaif.models import load_tokenizer
    from rlaif.stages.generate import continued

    tok = load_tokenizer(tiny_model)
    ids = tok(" provide that.", add_special_tokens=False).input_ids + [tok.eos_token_id]
    sample = SimpleNamespace(token_ids=ids, text="provide that.")  # the backends strip a response's text
    assert continued("I can't", tok, sample) == "I can't provide that."
    assert continued("I can't ", tok, SimpleNamespace(token_ids=[], text="x")) == "I can't x"


def test_a_guided_reply_ends_after_its_sentences_as_a_finished_answer(tiny_model):
    import dataclasses

    from rlaif.generate import Sample
    from rlaif.models import load_tokenizer
    from rlaif.stages.generate import guided_sample

    tok = load_tokenizer(tiny_model)
    tail = ' help with that. It is "illegal." Version 3.5 of it is worse! And so on, and on'
    ids = tuple(tok(tail, add_special_tokens=False).input_ids)
    cut = Sample(
        text=tail.strip(), tokens=len(ids), finished=False, logprobs=(-1.0,) * len(ids), token_ids=ids
    )

    def reply(sentences, sample=cut):
        return guided_sample(Guidance("", "I'm sorry, but I can't", sentences), tok, sample)

    one = reply(1)
    assert one.text == "I'm sorry, but I can't help with that." and one.finished
    # its token ids and log-probs stop at the cut, and decode to the text after the prefix
    assert one.token_ids == ids[: one.tokens] and len(one.logprobs) == one.tokens < len(ids)
    assert tok.decode(list(one.token_ids)).strip() == "help with that."
    assert reply(2).text == "I'm sorry, but I can't help with that. It is \"illegal.\""  # closing quote kept
    assert reply(3).text.endswith("worse!")  # "3.5" is no sentence's end
    listed = dataclasses.replace(cut, text="Do these:\n1. Wait.\n 2. See. 3. Go.", token_ids=())
    assert (
        guided_sample(Guidance("Be safe.", "", 1), tok, listed).text == "Do these:\n1. Wait."
    )  # not at "1."
    assert guided_sample(Guidance("Be safe.", "", 3), tok, listed).text.endswith(
        "2. See. 3."
    )  # mid-line: an end
    # no token ids (an endpoint): the cut text's tokens are counted again
    assert guided_sample(Guidance("Be safe.", "", 1), tok, listed).tokens == len(
        tok.encode("Do these:\n1. Wait.")
    )
    assert (
        reply(0) == reply(4) == reply(0, cut) and not reply(4).finished
    )  # off, or fewer sentences: as sampled
    assert reply(4).text == "I'm sorry, but I can't" + tail
    # a reply that ends where its sentences do is left as the model finished it, EOS and all
    done_ids = tuple(tok(" help with that.", add_special_tokens=False).input_ids) + (tok.eos_token_id,)
    done = Sample(text="help with that.", tokens=len(done_ids) - 1, finished=True, token_ids=done_ids)
    assert reply(1, done) == reply(0, done) and reply(1, done).token_ids[-1] == tok.eos_token_id
    # one that finished later is cut before its EOS token
    more_ids = tuple(tok(" help with that. Ask me more.", add_special_tokens=False).input_ids) + (
        tok.eos_token_id,
    )
    more = Sample(
        text="help with that. Ask me more.", tokens=len(more_ids) - 1, finished=True, token_ids=more_ids
    )
    assert (
        reply(1, more).token_ids == done_ids[:-1]
        and reply(1, more).text == "I'm sorry, but I can't help with that."
    )


def test_guided_figures_count_wins_of_guided_over_plain_answers():
    def j(guided, winner, kept=True):
        return {"guided": guided, "winner": winner, "kept": kept}

    records = [
        j([None, "harmlessness"], "y"),  # guided won
        j(["harmlessness", None], "y"),  # guided lost
        j(["harmlessness", None], "x"),  # guided won
        j([None, "harmlessness"], "y", kept=False),  # dropped: not counted
        j([None, None], "x"),  # both plain: not counted
        j([None, "helpfulness"], "x"),  # guided lost
    ]
    assert guided_figures(records) == {
        "guided": {"harmlessness": {"won": 2, "lost": 1}, "helpfulness": {"won": 0, "lost": 1}}
    }
    assert guided_figures([{"winner": "x", "kept": True}]) == {}
