"""Property-based tests of every parser that reads user input: whatever the input, a parser returns a value or
raises its own clear error type (never a stray KeyError/TypeError/traceback), and valid input round-trips."""

import json
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlaif.config import ConfigError, apply_overrides, build_config, parse_override
from rlaif.data import DataError, preference_record, read_jsonl, write_jsonl
from rlaif.judge.prompts import parse_rationale
from rlaif.principles import Problem, parse_principle

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@SETTINGS
@given(st.binary(max_size=400))
def test_read_jsonl_returns_objects_or_a_data_error(tmp_path, blob):
    path = tmp_path / "x.jsonl"
    path.write_bytes(blob)
    try:
        records = read_jsonl(path)
    except DataError as e:
        assert str(path) in str(e)
    else:
        assert all(isinstance(r, dict) for r in records)


@SETTINGS
@given(st.lists(st.dictionaries(st.text(max_size=10), json_values, max_size=5), max_size=8))
def test_jsonl_round_trips(tmp_path, records):
    path = tmp_path / "r.jsonl"
    write_jsonl(path, records)
    assert read_jsonl(path) == records
    assert not list(tmp_path.glob(".*.tmp"))


@SETTINGS
@given(st.text(max_size=60))
def test_overrides_parse_or_raise_config_errors(text):
    try:
        path, value = parse_override(text)
        config = build_config(apply_overrides({}, [text]))
    except ConfigError as e:
        assert str(e)
    else:
        assert path and all(path)
        assert config is not None


@SETTINGS
@given(
    st.sampled_from(["dpo.beta", "judge.min_confidence", "generate.temperature", "dpo.epochs", "judge.mode"]),
    json_values,
)
def test_typed_keys_accept_or_name_the_key(key, value):
    try:
        build_config(apply_overrides({}, [f"{key}={json.dumps(value)}"]))
    except ConfigError as e:
        assert key in str(e)


toml_scalars = st.one_of(
    st.text(alphabet=string.ascii_letters + " -?", max_size=30).map(json.dumps),
    st.integers(-5, 5).map(str),
    st.floats(-2, 2, allow_nan=False).map(repr),
    st.sampled_from(["true", "[]", '["a"]', "{}", ""]),
)


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(["id", "kind", "title", "question", "weight", "description", "check", "x"]),
        toml_scalars,
        max_size=8,
    )
)
def test_principle_files_parse_or_list_problems(tmp_path, fields):
    path = tmp_path / "p.toml"
    path.write_text("".join(f"{k} = {v}\n" for k, v in fields.items()))
    problems: list[Problem] = []
    p = parse_principle(path, problems)
    assert (p is None) == bool(problems)
    assert all(pr.file == str(path) for pr in problems)
    if p is not None:
        assert p.id == "p" and p.weight > 0 and p.question


@SETTINGS
@given(st.text(max_size=200))
def test_rationale_parse_is_total_and_strict(text):
    got = parse_rationale(text, "Answer:", ("A", "B"))
    assert got in (None, 0, 1)
    # appending a verdict line to text that names no verdict of its own always parses to that verdict
    if "answer" not in text.lower():
        assert parse_rationale(text + "\nAnswer: B", "Answer:", ("A", "B")) == 1


@SETTINGS
@given(st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected"]), json_values, max_size=3))
def test_preference_records_parse_or_raise_data_errors(record):
    try:
        out = preference_record(record, "f.jsonl:1")
    except DataError as e:
        assert "f.jsonl:1" in str(e)
    else:
        assert isinstance(out["chosen"], str) and isinstance(out["rejected"], str)
        assert isinstance(out["prompt"], str | list)
