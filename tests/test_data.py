import json

import pytest

from rlaif.data import DataError, load_prompts, read_jsonl, write_jsonl


def test_roundtrip(tmp_path):
    p = tmp_path / "a.jsonl"
    assert write_jsonl(p, ({"i": i, "t": "é\n"} for i in range(3))) == 3
    assert read_jsonl(p) == [{"i": 0, "t": "é\n"}, {"i": 1, "t": "é\n"}, {"i": 2, "t": "é\n"}]


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "a.jsonl"
    write_jsonl(p, [{"old": True}])

    def records():
        yield {"new": 1}
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(p, records())
    assert read_jsonl(p) == [{"old": True}]
    assert [f.name for f in tmp_path.iterdir()] == ["a.jsonl"]  # no temp file left behind


def test_bad_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "ok"}\n\n{"prompt": "trunc\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON"):
        read_jsonl(p)
    p.write_text('{"prompt": "ok"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: expected a JSON object"):
        read_jsonl(p)


def test_prompts_validation(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_prompts(p)
    p.write_text(json.dumps({"prompt": ["not", "text"]}) + "\n")
    with pytest.raises(DataError, match="p.jsonl:1: "):
        load_prompts(p)
    # errors name the line a user can open, not a record count: blank lines count
    p.write_text(json.dumps({"prompt": "ok"}) + "\n\n\n" + json.dumps({"prompt": 3}) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl:4: \"prompt\" must be"):
        load_prompts(p)
    p.write_bytes(json.dumps({"prompt": "ok"}).encode() + b"\n" + b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:2: not UTF-8"):
        load_prompts(p)
    with pytest.raises(DataError, match="is a folder"):
        load_prompts(tmp_path)
    p.write_text(
        json.dumps({"prompt": "a", "id": "x"}) + "\n" + json.dumps({"prompt": "b", "id": "x"}) + "\n"
    )
    with pytest.raises(DataError, match="duplicate id"):
        load_prompts(p)
    p.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"prompt": "b", "kind": "benign"}) + "\n")
    assert [(r["id"], r["prompt"]) for r in load_prompts(p)] == [("0", "a"), ("1", "b")]
    with pytest.raises(DataError, match="not found"):
        load_prompts(tmp_path / "missing.jsonl")


def test_preference_record_takes_the_turns_before_the_reply_into_the_prompt():
    from rlaif.data import preference_record

    user = [{"role": "user", "content": "Plan a trip."}]
    turns = [{"role": "assistant", "content": "Where to?"}, {"role": "user", "content": "Rome."}]
    record = {
        "prompt": user,
        "chosen": [*turns, {"role": "assistant", "content": "Day 1: the Forum."}],
        "rejected": [*turns, {"role": "assistant", "content": "No."}],
        "principle": "answers",
    }
    assert preference_record(record, "f:1") == {
        "prompt": user + turns,
        "chosen": "Day 1: the Forum.",
        "rejected": "No.",
        "principle": "answers",
    }
    # a single user turn is the standard format's string prompt
    one = {"prompt": user, "chosen": "Rome.", "rejected": "No."}
    assert preference_record(one, "f:1")["prompt"] == "Plan a trip."


@pytest.mark.parametrize(
    "record, message",
    [
        (["a", "b"], "f.jsonl:3: expected an object with prompt/chosen/rejected"),
        ({"prompt": "p", "chosen": "a"}, 'f.jsonl:3: missing "rejected"'),
        ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, "must each have a string role"),
        ({"prompt": "  ", "chosen": "a", "rejected": "b"}, '"prompt" must be a non-empty string'),
        (
            {
                "chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "b"}],
            },
            "do not share a conversation before the reply",
        ),
        ({"prompt": "p", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, '"chosen": must be'),
    ],
)
def test_bad_preference_records_name_the_line(record, message):
    from rlaif.data import preference_record

    with pytest.raises(DataError) as e:
        preference_record(record, "f.jsonl:3")
    assert message in str(e.value) and str(e.value).startswith("f.jsonl:3: ")


@pytest.mark.parametrize(
    "record, message",
    [
        ("text", "expected an object with prompt/completion/label"),
        ({"prompt": "p", "completion": "c", "label": "yes"}, '"label" must be true (desirable) or false'),
        ({"prompt": 3, "completion": "c", "label": True}, '"prompt" must be a non-empty string'),
        (
            {"prompt": "p", "completion": [{"role": "user", "content": "c"}], "label": True},
            '"completion" messages must be one assistant message',
        ),
    ],
)
def test_bad_unpaired_records_name_the_line(record, message):
    from rlaif.data import unpaired_record

    with pytest.raises(DataError) as e:
        unpaired_record(record, "f.jsonl:7")
    assert message in str(e.value) and str(e.value).startswith("f.jsonl:7: ")
