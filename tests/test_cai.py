"""Constitutional AI's supervised phase: principle requests, the critique stage (prompts, drop rules, records),
the sft stage (loss mask, TRL formats, `rlaif sft`), revision pairs, `rlaif revisions`, kill and resume."""

import json
import os
import shutil
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.data import DataError, read_jsonl, sft_record
from rlaif.generate import Sample
from rlaif.principle_checks import check_all
from rlaif.principles import load_constitution
from rlaif.rounds import run
from rlaif.stages.critique import critique_messages, drop_reason, revision_messages
from tests.conftest import ROOT, kill_then_rerun

# -- principles and examples ------------------------------------------------------------------------------


@pytest.fixture
def copy_tree(tmp_path):
    shutil.copytree(ROOT / "principles", tmp_path / "principles")
    shutil.copytree(ROOT / "constitution", tmp_path / "constitution")
    return tmp_path


def test_every_shipped_principle_has_both_requests_and_the_examples_load():
    c = load_constitution("default")
    assert all(p.critique and p.revision for p in c.principles)
    assert len(c.examples) >= 2 and all(e.critique and e.revision for e in c.examples)
    assert check_all(critique=True) == []


def test_a_missing_or_empty_critique_request_names_the_file_and_key(copy_tree, capsys):
    hate = copy_tree / "principles" / "hate.toml"
    hate.write_text("\n".join(x for x in hate.read_text().splitlines() if not x.startswith("critique")))
    problems = check_all(copy_tree / "principles", copy_tree / "constitution")
    assert [(Path(p.file).name, p.key) for p in problems] == [("hate.toml", "critique")]
    # an empty request
    privacy = copy_tree / "principles" / "privacy.toml"
    privacy.write_text(
        "\n".join(
            x for x in (ROOT / "principles" / "privacy.toml").read_text().splitlines() if "revision" not in x
        )
        + '\nrevision = "  "\n'
    )
    problems = check_all(copy_tree / "principles", copy_tree / "constitution")
    assert any(
        p.file.endswith("privacy.toml") and p.key == "revision" and "non-empty" in p.message for p in problems
    )
    args = ["principles", "check", "--principles-dir", str(copy_tree / "principles")]
    args += ["--constitution-dir", str(copy_tree / "constitution")]
    assert main(args) == 2
    out = capsys.readouterr().err
    assert "hate.toml: critique: missing" in out and "privacy.toml: revision" in out
    # a run without the critique stage may leave them out
    hate_only = [p for p in check_all(copy_tree / "principles", copy_tree / "constitution", critique=False)]
    assert not any(p.key == "critique" for p in hate_only)


def test_principles_check_reads_a_users_constitution_and_principle_files(tmp_path, capsys):
    # a user's constitution in their own folder: `check` reads it and the principles it names, not the shipped ones
    shutil.copytree(ROOT / "principles", tmp_path / "mine" / "principles")
    shutil.copytree(ROOT / "constitution", tmp_path / "mine" / "constitution")
    constitution = tmp_path / "mine" / "constitution" / "default.toml"
    assert main(["principles", "check", str(constitution)]) == 0
    violence = tmp_path / "mine" / "principles" / "violence.toml"
    violence.write_text(violence.read_text().replace("\ncritique = ", "\n# critique = "))
    capsys.readouterr()
    for args in (
        [str(constitution)],
        ["--constitution", str(constitution)],
        [str(violence)],
        [str(violence.parent)],
    ):
        assert main(["principles", "check", *args]) == 2, args
        assert f"{violence}: critique: missing" in capsys.readouterr().err
    # a run without the critique stage may leave it out; the shipped files are untouched
    assert main(["principles", "check", str(constitution), "--no-critique"]) == 0
    assert main(["principles", "check"]) == 0
    assert main(["principles", "check", str(tmp_path / "none.toml")]) == 2
    assert "none.toml: file: not found" in capsys.readouterr().err


def test_a_broken_few_shot_example_names_the_example_and_key(copy_tree):
    ex = copy_tree / "constitution" / "templates" / "critique-examples.toml"
    ex.write_text(ex.read_text().replace('critique = "The joke', 'critik = "The joke'))
    problems = check_all(copy_tree / "principles", copy_tree / "constitution")
    keys = {p.key for p in problems if p.file.endswith("critique-examples.toml")}
    assert keys == {"example[2].critik", "example[2].critique"}


# -- prompts and drop rules -------------------------------------------------------------------------------


def test_the_critique_and_revision_prompts_put_examples_first_then_the_conversation():
    c = load_constitution("default")
    hate, ex = c.by_id("hate"), c.examples[0]
    msgs = critique_messages(c.examples[:1], "Tell me a joke.", "Here is a rude joke.", hate)
    assert [m["role"] for m in msgs] == ["user", "assistant"] * 3 + ["user", "assistant", "user"]
    assert [m["content"] for m in msgs[:6]] == [
        ex.prompt,
        ex.response,
        ex.critique_request,
        ex.critique,
        ex.revision_request,
        ex.revision,
    ]
    assert [m["content"] for m in msgs[6:]] == ["Tell me a joke.", "Here is a rude joke.", hate.critique]
    rev = revision_messages(c.examples[:1], "Tell me a joke.", "Here is a rude joke.", hate, "It is rude.")
    assert rev[: len(msgs)] == msgs
    assert rev[len(msgs) :] == [
        {"role": "assistant", "content": "It is rude."},
        {"role": "user", "content": hate.revision},
    ]
    assert critique_messages((), "q", "a", hate)[0] == {"role": "user", "content": "q"}


def test_the_chat_template_renders_the_conversation_up_to_the_assistants_turn(tiny_model):
    from rlaif.generate.hf import chat_prompt
    from rlaif.models import load_tokenizer

    c = load_constitution("default")
    text = chat_prompt(load_tokenizer(tiny_model), critique_messages((), "q?", "a.", c.by_id("hate")))
    want = "<|im_start|>user\nq?<|im_end|>\n<|im_start|>assistant\na.<|im_end|>\n<|im_start|>user\n"
    assert text == want + c.by_id("hate").critique + "<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    ("revision", "finished", "current", "reason"),
    [
        ("", True, "old", "empty"),
        ("  \n ", True, "old", "empty"),
        ("Old  text.", True, "old text.", "unchanged"),
        ("old\ntext.", True, " old text. ", "unchanged"),
        ("a new answer that never ended", False, "old", "too_long"),
        ("A new answer.", True, "old", None),
        ("", False, "old", "empty"),
    ],
)
def test_drop_rules(revision, finished, current, reason):
    assert drop_reason(revision, finished, current) == reason


def test_a_revision_that_repeats_a_few_shot_revision_is_dropped():
    examples = load_constitution("default").examples
    copied = "Sure. " + examples[1].revision.replace(" ", "  ").upper()[:60] + " and more."
    assert drop_reason(copied, True, "old", examples) == "copies_example"
    assert drop_reason(copied, True, "old") is None  # without the examples nothing to compare with
    assert drop_reason("I won't write jokes about groups.", True, "old", examples) is None
    assert drop_reason(copied, False, "old", examples) == "too_long"  # the earlier rules come first


def test_principles_are_drawn_by_weight_and_kind_seeded_per_prompt_and_pass():
    from collections import Counter

    from rlaif.stages.critique import candidates, draw_principle

    pool = (["a", "b", "c"], [1.0, 3.0, 0.0])
    draws = Counter(draw_principle(pool, 0, 1, str(i), 1) for i in range(4000))
    assert draws["c"] == 0 and 2.6 < draws["b"] / draws["a"] < 3.4
    assert [draw_principle(pool, 0, 1, "7", n) for n in (1, 2, 3)] == [
        draw_principle(pool, 0, 1, "7", n) for n in (1, 2, 3)
    ]
    c = load_constitution("default")
    harmless, _ = candidates(c, "harmlessness")
    assert harmless and {p.kind for p in harmless} == {"harmlessness"}
    assert len(candidates(c)[0]) == len(c.principles)


# -- the critique stage with a scripted generator -----------------------------------------------------------


class Scripted:
    """A generator whose answers are chosen by what it is asked: the initial response, a critique, a revision
    (by the pass's principle and the response in the conversation), so every drop rule can be reached."""

    def __init__(self, calls):
        self.calls, self.truncated_prompts = calls, 0

    def generate(self, prompts, n, seed, progress=None):
        self.calls.append(prompts)
        out = []
        for p in prompts:
            if isinstance(p, str):
                out.append([Sample(f"first answer to {p}", 4, True)])
                continue
            if not p[-1]["content"].startswith("Rewrite"):  # a critique request
                out.append([Sample(f"critique of <{p[-2]['content']}>", 3, True)])
                continue
            prompt, response = p[-5]["content"], p[-4]["content"]
            if prompt.startswith("q0"):
                out.append([Sample("", 0, True)])  # q0: always empty
            elif prompt.startswith("q1"):
                out.append([Sample(response.upper(), 4, True)])  # q1: the same text, other case
            elif prompt.startswith("q2"):
                out.append([Sample("a revision that ran out of tokens", 8, False)])  # q2: cut
            else:
                out.append([Sample(f"revised ({len(p)}) {response}", 5, True)])  # q3: kept
        return out


@pytest.fixture
def cai_run(tiny_run):
    prompts = [f"q{i}: tell me something." for i in range(4)]
    (tiny_run / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    (tiny_run / "sft.jsonl").write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "Say hello."},
                    {"role": "assistant", "content": "Hello!"},
                ]
            }
        )
        + "\n"
        + json.dumps({"prompt": "How do I bake bread?", "completion": "Mix flour, water, salt and yeast."})
        + "\n"
    )
    with open(tiny_run / "config.toml", "a") as f:
        f.write(
            '\n[round]\nfirst_stages = ["critique", "sft", "merge"]\n'
            "[critique]\npasses = 2\nfew_shot = 1\nmax_new_tokens = 12\n"
            '[sft]\nepochs = 1\nbatch_size = 2\nmax_length = 128\ndata = ["sft.jsonl"]\n'
        )
    return tiny_run


def test_the_critique_stage_records_every_pass_and_drops_by_rule(cai_run, monkeypatch):
    import rlaif.stages.critique as critique_stage  # it samples through the generator it imported

    calls = []
    monkeypatch.setattr(critique_stage, "generator", lambda r, settings: (Scripted(calls), "scripted"))
    (cai_run / "helpful.jsonl").write_text('{"prompt": "Say hello."}\n{"prompt": "Name a fruit."}\n')
    sets = ["critique.principle_kind=harmlessness", "critique.helpful_prompts=helpful.jsonl"]
    run(cai_run, rounds=1, overrides=sets)
    records = read_jsonl(cai_run / "round_1" / "revisions.jsonl")
    assert [x["prompt_id"] for x in records] == ["0", "1", "2", "3"]  # one record per prompt, in order
    reasons = [[p["dropped"] for p in x["passes"]] for x in records]
    assert reasons == [["empty"] * 2, ["unchanged"] * 2, ["too_long"] * 2, [None, None]]
    assert [x["final"] for x in records[:3]] == [None, None, None]
    kept = records[3]
    # pass 2 critiqued and revised pass 1's kept revision, and the final text is pass 2's revision
    assert kept["passes"][1]["critique"] == f"critique of <{kept['passes'][0]['revision']}>"
    assert kept["passes"][1]["revision"].endswith(kept["passes"][0]["revision"])
    assert kept["final"] == kept["passes"][1]["revision"]
    # a dropped revision leaves the text as it was for the next pass
    assert records[0]["passes"][1]["critique"] == f"critique of <{records[0]['initial']}>"
    # steps are batched: 1 initial call + 2 calls per pass, each over all four prompts
    assert [len(c) for c in calls] == [4] * 5 + [2]
    harmless = {q.id for q in load_constitution("default").principles if q.kind == "harmlessness"}
    drawn = [p["principle"] for x in records for p in x["passes"]]
    assert set(drawn) <= harmless and len(set(drawn)) > 1
    metrics = json.loads((cai_run / "round_1" / "metrics.json").read_text())
    assert metrics["critique"]["dropped"] == {"empty": 2, "unchanged": 2, "too_long": 2, "copies_example": 0}
    assert metrics["critique"]["kept"] == 2 and metrics["critique"]["revised_prompts"] == 1
    # SFT trained on the one kept revision and the two data records, and the merge made the round's model
    sft = read_jsonl(cai_run / "round_1" / "sft_data.jsonl")
    sources = ["revision", "helpful", "helpful", "data:sft.jsonl", "data:sft.jsonl"]
    assert [x["source"] for x in sft] == sources
    assert sft[0]["completion"] == kept["final"] and sft[0]["prompt"] == kept["prompt"]
    # the helpful prompts are answered once each, unrevised (one more batched call, the sixth)
    assert [x["prompt"] for x in sft[1:3]] == ["Say hello.", "Name a fruit."]
    assert sft[1]["completion"] == "first answer to Say hello." and len(calls) == 6
    assert metrics["sft"]["examples"] == 5 and metrics["sft"]["steps"] == 3
    assert (cai_run / "round_1" / "model" / "model.safetensors").is_file()
    assert metrics["model"]["path"] == "round_1/model"


def test_revision_pairs_prefer_the_final_revision_without_a_judge(cai_run, monkeypatch):
    import rlaif.stages.critique as critique_stage  # it samples through the generator it imported

    monkeypatch.setattr(critique_stage, "generator", lambda r, settings: (Scripted([]), "scripted"))
    sets = ['round.first_stages=["critique", "preferences", "train", "merge"]', "critique.pairs=true"]
    run(cai_run, rounds=1, overrides=sets)
    revisions = read_jsonl(cai_run / "round_1" / "revisions.jsonl")
    pairs = read_jsonl(cai_run / "round_1" / "train_pairs.jsonl")
    assert len(pairs) == 1 and pairs[0]["source"] == "revision"
    assert pairs[0]["chosen"] == revisions[3]["final"] and pairs[0]["rejected"] == revisions[3]["initial"]
    assert json.loads((cai_run / "round_1" / "metrics.json").read_text())["dpo"]["pairs"] == 1


def test_a_round_runs_one_training_stage():
    from rlaif.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="round.first_stages.*sft and dpo"):
        build_config({"round": {"first_stages": ["critique", "sft", "train", "merge"]}})


def test_few_shot_beyond_the_examples_file_is_refused_before_any_stage(cai_run, capsys):
    assert main(["run", str(cai_run), "--rounds", "1", "--set", "critique.few_shot=9"]) == 2
    assert "critique-examples.toml: example: critique.few_shot = 9" in capsys.readouterr().err
    assert not (cai_run / "round_1").exists()


# -- sft: loss mask and data formats ------------------------------------------------------------------------


def test_the_loss_mask_covers_the_response_and_its_eos_only(tiny_model):
    """Token positions checked by hand: the prompt is the chat template's text up to the assistant header."""
    import torch

    from rlaif.config import SFTConfig
    from rlaif.models import load_model, load_tokenizer
    from rlaif.stages.sft import SFTTask, loss_mask

    tok = load_tokenizer(tiny_model)
    task = SFTTask(tok, SFTConfig(max_length=64))
    e = task.encode({"prompt": "Say hello.", "completion": "Mix flour."})
    prompt_ids = tok("<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n").input_ids
    response_ids = tok("Mix flour.").input_ids + [tok.eos_token_id]
    assert e.ids == prompt_ids + response_ids and e.start == len(prompt_ids)
    cut = task.encode({"prompt": "Say hello.", "completion": "Mix flour.", "finished": False})
    assert cut.ids == prompt_ids + response_ids[:-1]  # a response cut by a limit gets no EOS
    short = task.encode({"prompt": "Hi", "completion": "Bake it."})
    mask = loss_mask([e, short], len(e.ids) + 3)
    assert mask[0].tolist() == [0] * len(prompt_ids) + [1] * len(response_ids) + [0] * 3
    assert mask[1].sum().item() == len(short.ids) - short.start and mask[1, len(short.ids) :].sum() == 0

    # the loss is the mean NLL of exactly those tokens, computed by hand from the full logits
    model = load_model(tiny_model)
    loss, figures = task.loss(model, [e, short], [0, 1])
    with torch.no_grad():
        for row, x in enumerate((e, short)):
            logp = torch.log_softmax(model(input_ids=torch.tensor([x.ids])).logits[0].float(), -1)
            want = -torch.stack([logp[t - 1, x.ids[t]] for t in range(x.start, len(x.ids))]).mean()
            assert loss[row].item() == pytest.approx(want.item(), abs=1e-5)
    assert figures["tokens"] == len(response_ids) + len(short.ids) - short.start


@pytest.mark.parametrize(
    ("record", "prompt", "completion"),
    [
        ({"prompt": "Hi", "completion": "Hello"}, "Hi", "Hello"),
        (
            {
                "prompt": [{"role": "user", "content": "Hi"}],
                "completion": [{"role": "assistant", "content": "Yo"}],
            },
            "Hi",
            "Yo",
        ),
        (
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Yo"},
                ]
            },
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "Yo",
        ),
    ],
)
def test_trl_sft_formats(record, prompt, completion):
    assert sft_record(record, "f:1") == {"prompt": prompt, "completion": completion, "finished": True}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"text": "raw"}, 'expected "prompt" and "completion", or "messages"'),
        ({"prompt": "Hi", "completion": ""}, "the completion must be a non-empty string"),
        ({"messages": [{"role": "user", "content": "Hi"}]}, "must end with an assistant message"),
        ({"prompt": "Hi", "completion": "x", "finished": "yes"}, '"finished" must be true or false'),
    ],
)
def test_bad_sft_records_name_the_line(record, message):
    with pytest.raises(DataError, match="f:3") as e:
        sft_record(record, "f:3")
    assert message in str(e.value)


def test_rlaif_sft_trains_from_a_trl_file_and_the_completion_becomes_likelier(tiny_model, tmp_path, capsys):
    import torch

    from rlaif.config import SFTConfig
    from rlaif.models import load_model, load_tokenizer
    from rlaif.stages.sft import SFTTask

    data = tmp_path / "chats.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Say hello."},
                {"role": "assistant", "content": "Mix flour."},
            ]
        }
    ]
    rows.append({"prompt": "How do I bake bread?", "completion": "Mix flour, water, salt and yeast."})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 4))
    out = tmp_path / "out"
    sets = ["--set", "sft.learning_rate=0.01", "--set", "sft.epochs=3", "--set", "sft.max_length=64"]
    assert main(["sft", "--data", str(data), "--model", tiny_model, "--out", str(out), *sets]) == 0
    assert "trained on 8 examples" in capsys.readouterr().out
    log = json.loads((out / "adapter" / "training.json").read_text())
    assert log["metrics"]["loss_last"] < log["metrics"]["loss_first"]
    tok = load_tokenizer(tiny_model)
    task = SFTTask(tok, SFTConfig(max_length=64))
    enc = [task.encode({"prompt": "Say hello.", "completion": "Mix flour."})]
    with torch.no_grad():
        before = task.loss(load_model(tiny_model), enc, [0])[0].item()
        after = task.loss(load_model(str(out / "model")), enc, [0])[0].item()
    assert after < before - 0.5


def test_rlaif_sft_names_the_bad_line(tiny_model, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(
        json.dumps({"prompt": "Hi", "completion": "Yo"}) + "\n\n" + json.dumps({"text": "x"}) + "\n"
    )
    assert main(["sft", "--data", str(data), "--model", tiny_model, "--out", str(tmp_path / "o")]) == 2
    assert f"{data}:3" in capsys.readouterr().err


# -- browse, kill and resume --------------------------------------------------------------------------------


def test_rlaif_revisions_shows_and_filters_records(cai_run, monkeypatch, capsys):
    import rlaif.stages.critique as critique_stage  # it samples through the generator it imported

    monkeypatch.setattr(critique_stage, "generator", lambda r, settings: (Scripted([]), "scripted"))
    run(cai_run, rounds=1)
    capsys.readouterr()
    assert main(["revisions", str(cai_run), "--json", "--kept"]) == 0
    shown = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["prompt_id"] for x in shown] == ["3"]
    assert main(["revisions", str(cai_run), "--json", "--principle", shown[0]["passes"][0]["principle"]]) == 0
    assert all(
        any(p["principle"] == shown[0]["passes"][0]["principle"] for p in json.loads(x)["passes"])
        for x in capsys.readouterr().out.splitlines()
    )
    assert main(["revisions", str(cai_run), "--round", "1", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "q0: tell me something." in out and "dropped: empty" in out and "1 of 4" in out
    assert main(["revisions", str(cai_run), "--round", "2"]) == 2
    assert main(["report", str(cai_run)]) == 0
    assert "critique and sft" in capsys.readouterr().out


@pytest.mark.parametrize("kill_after", ["revisions.jsonl", "checkpoint/progress.json", "sft_log.jsonl"])
def test_sigkill_in_the_supervised_round_then_rerun_matches_an_uninterrupted_one(
    cai_run, tmp_path, kill_after
):
    sets = ["--set", "sft.checkpoint_every=1", "--set", "sft.batch_size=1"]
    reference = tmp_path / "reference"
    reference.mkdir()
    for f in ("config.toml", "prompts.jsonl", "sft.jsonl"):
        (reference / f).write_text((cai_run / f).read_text())
    run(reference, rounds=1, overrides=[s for s in sets if s != "--set"])

    kill_then_rerun(cai_run, kill_after, ["--rounds", "1", *sets])
    for name in ("revisions.jsonl", "sft_data.jsonl"):
        assert (cai_run / "round_1" / name).read_text() == (reference / "round_1" / name).read_text(), name
    got_log = read_jsonl(cai_run / "round_1" / "sft_log.jsonl")
    want_log = read_jsonl(reference / "round_1" / "sft_log.jsonl")
    assert [r["step"] for r in got_log] == [r["step"] for r in want_log] and len(want_log) >= 2
    for a, b in zip(got_log, want_log, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["lr"] == b["lr"]
    got = json.loads((cai_run / "round_1" / "metrics.json").read_text())
    if kill_after.startswith("checkpoint"):
        assert got["sft"]["resumed_at_step"] >= 1
    assert len(read_jsonl(cai_run / "round_1" / "revisions.jsonl")) == 4


def test_rlaif_sft_under_torchrun_with_two_processes_matches_one(tiny_model, tmp_path):
    """`torchrun --nproc_per_node 2 -m rlaif.cli sft ...` (gloo on the CPU) logs the single process's losses."""
    import subprocess
    import sys

    data = tmp_path / "chats.jsonl"
    rows = [
        {"prompt": f"Question {i}: how do I bake bread?", "completion": "Mix flour and water."}
        for i in range(6)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [
        "sft",
        "--data",
        str(data),
        "--model",
        tiny_model,
        "--set",
        "sft.max_length=64",
        "--set",
        "sft.epochs=1",
    ]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "rlaif.cli"]
    done = subprocess.run(
        [*torchrun, *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    one = json.loads((tmp_path / "one" / "adapter" / "training.json").read_text())["log"]
    two = json.loads((tmp_path / "two" / "adapter" / "training.json").read_text())["log"]
    assert len(one) == len(two) == 2  # 6 examples, 4 per step
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5) and b["examples"] == a["examples"]
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()
