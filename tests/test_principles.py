import json
import random
import shutil
from collections import Counter

import pytest

from rlaif.cli import main
from rlaif.principle_checks import check_all
from rlaif.principles import PrincipleError, load_constitution
from tests.conftest import ROOT


def test_every_shipped_file_is_valid():
    assert check_all() == []
    c = load_constitution("default")
    kinds = Counter(p.kind for p in c.principles)
    assert len(c.principles) >= 8 and kinds["harmlessness"] >= 7 and kinds["helpfulness"] >= 4
    for path in sorted((ROOT / "constitution").glob("*.toml")):
        load_constitution(str(path))


@pytest.fixture
def copy_tree(tmp_path):
    shutil.copytree(ROOT / "principles", tmp_path / "principles")
    shutil.copytree(ROOT / "constitution", tmp_path / "constitution")
    return tmp_path


def test_broken_principle_names_file_and_every_key(copy_tree):
    bad = copy_tree / "principles" / "violence.toml"
    bad.write_text('id = "violence"\nkind = "harmful"\nweight = -1\ntitel = "x"\n')
    problems = check_all(copy_tree / "principles", copy_tree / "constitution")
    keys = {(p.file, p.key) for p in problems}
    assert (str(bad), "kind") in keys
    assert (str(bad), "weight") in keys
    assert (str(bad), "question") in keys  # missing required field
    assert (str(bad), "titel") in keys  # unknown key
    assert len(problems) == len(set(problems))


def test_bad_toml_and_id_mismatch(copy_tree):
    (copy_tree / "principles" / "hate.toml").write_text("id = \n")
    p = copy_tree / "principles" / "privacy.toml"
    p.write_text(p.read_text().replace('id = "privacy"', 'id = "secrecy"'))
    problems = check_all(copy_tree / "principles", copy_tree / "constitution")
    assert any(x.file.endswith("hate.toml") and x.key == "toml" for x in problems)
    assert any(
        x.file.endswith("privacy.toml") and x.key == "id" and "file name" in x.message for x in problems
    )


def test_constitution_naming_missing_principle(copy_tree):
    c = copy_tree / "constitution" / "default.toml"
    c.write_text(c.read_text() + "ghost = 1.0\n")
    with pytest.raises(PrincipleError) as e:
        load_constitution(str(c))
    assert any(p.key == "principles.ghost" for p in e.value.problems)


def test_template_without_placeholder(copy_tree):
    t = copy_tree / "constitution" / "templates" / "pairwise.toml"
    t.write_text(t.read_text().replace("{response_b}", "B goes here"))
    with pytest.raises(PrincipleError, match="response_b"):
        load_constitution(str(copy_tree / "constitution" / "default.toml"))


def test_cli_check_exits_2_without_traceback(copy_tree, capsys):
    bad = copy_tree / "principles" / "weapons.toml"
    bad.write_text('id = "weapons"\nkind = "harmlessness"\ntitle = "t"\n')
    code = main(
        [
            "principles",
            "check",
            "--principles-dir",
            str(copy_tree / "principles"),
            "--constitution-dir",
            str(copy_tree / "constitution"),
        ]
    )
    out = capsys.readouterr()
    assert code == 2
    assert "weapons.toml" in out.err and "question" in out.err
    assert "Traceback" not in out.err + out.out


def test_sampling_is_seeded_and_weighted():
    c = load_constitution("default")
    a = [c.sample(random.Random(7)).id for _ in range(3)]
    assert a == [c.sample(random.Random(7)).id for _ in range(3)]
    rng = random.Random(0)
    counts = Counter(c.sample(rng).id for _ in range(20000))
    # "concise" has weight 0.5, every other principle 1.0: about half as often
    assert 0.4 < counts["concise"] / counts["violence"] < 0.6
    assert set(counts) == {p.id for p in c.principles}


def test_a_runs_constitution_path_is_relative_to_the_run_folder(tiny_run, tmp_path, monkeypatch):
    from rlaif.config import load_config
    from rlaif.manifest import write_manifest
    from rlaif.rounds import open_run

    # the user's constitution beside the run's config: two principles, its own folder of principle files
    shutil.copytree(ROOT / "principles", tiny_run / "mine" / "principles")
    text = (ROOT / "constitution" / "default.toml").read_text()
    head = text.split("[principles]")[0].replace(
        'principles_dir = "../principles"', 'principles_dir = "principles"'
    )
    head = head.replace('"templates/', f'"{ROOT / "constitution" / "templates"}/')
    (tiny_run / "mine" / "mine.toml").write_text(head + "[principles]\nhate = 1.0\nhonesty = 2.0\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    run = open_run(tiny_run, load_config(tiny_run, ['judge.constitution="mine/mine.toml"']))
    assert [p.id for p in run.constitution.principles] == ["hate", "honesty"]
    assert run.constitution.path == str(tiny_run.resolve() / "mine" / "mine.toml")
    assert run.constitution.principles[0].path.startswith(str(tiny_run.resolve() / "mine" / "principles"))
    # the manifest stores them relative to the run, as it does prompts, so a moved run names its own files
    write_manifest(run, [], [], [1])
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert manifest["constitution"] == "mine/mine.toml"
    assert manifest["principles"] == {
        "hate": "mine/principles/hate.toml",
        "honesty": "mine/principles/honesty.toml",
    }
    # a name still means a shipped constitution
    assert open_run(tiny_run, load_config(tiny_run)).constitution.path == str(
        ROOT / "constitution" / "default.toml"
    )


def test_two_principle_files_with_one_id_are_named_together(copy_tree, capsys):
    other = copy_tree / "other"
    other.mkdir()
    shutil.copy(copy_tree / "principles" / "hate.toml", other / "hate.toml")
    assert main(["principles", "check", str(copy_tree / "principles"), str(other)]) == 2
    err = capsys.readouterr().err
    assert (
        f"{other / 'hate.toml'}: id: 'hate' is also used by {copy_tree / 'principles' / 'hate.toml'}" in err
    )
    assert "1 problem(s)" in err


def _edit(path, old, new):
    text = path.read_text()
    assert old in text, (path, old)  # the edit must land, or the case tests nothing
    path.write_text(text.replace(old, new, 1))


TOP = 'name = "default"'
# the copied pointwise template, not the shipped one the constitution falls back to
POINTWISE = ("default.toml", TOP, TOP + '\npointwise_template = "templates/pointwise.toml"')
# (edits: file under the copied tree, text, its replacement; then the file and key the problem must name, and words
# of its message)
BROKEN = [
    (
        [("default.toml", "[principles]", '[principles]\n"../etc" = 1.0')],
        "default.toml",
        "principles.../etc",
        "not a principle id",
    ),
    (
        [("default.toml", TOP, TOP + "\nprinciples_list = 3")],
        "default.toml",
        "principles_list",
        "unknown key",
    ),
    (
        [("default.toml", "[guidance]\n", "[guidance]\nhelpfulness = 3\n")],
        "default.toml",
        "guidance.helpfulness",
        "must be a system prompt",
    ),
    (
        [
            ("default.toml", TOP, TOP + '\nguidance = "be safe"'),
            ("default.toml", "[guidance]\n", "[guidance_x]\n"),
        ],
        "default.toml",
        "guidance",
        "must be a table of kind = system prompt",
    ),
    (
        [("default.toml", 'harmlessness = "smollm2-135m-harmless"', "harmlessness = 3")],
        "default.toml",
        "reward_models.harmlessness",
        "reward model's name or folder",
    ),
    (
        [("default.toml", "helpfulness = -10.0", 'helpfulness = "a lot"')],
        "default.toml",
        "refusal_rewards.helpfulness",
        "must be a finite number",
    ),
    (
        [
            ("default.toml", "[refusal_rewards]\nhelpfulness = -10.0", ""),
            ("default.toml", TOP, TOP + "\nrefusal_rewards = 1"),
        ],
        "default.toml",
        "refusal_rewards",
        "must be a table of kind-or-principle",
    ),
    (
        [("templates/pairwise.toml", "\noptions = [", "\nanswer_prefix_x = 1\noptions = [")],
        "pairwise.toml",
        "answer_prefix_x",
        "unknown key",
    ),
    (
        [POINTWISE, ("templates/pointwise.toml", 'mode = "pointwise"', 'mode = "logprob"')],
        "pointwise.toml",
        "mode",
        "needs a 'pointwise' template",
    ),
    (
        [POINTWISE, ("templates/pointwise.toml", 'options = [" Yes", " No"]', 'options = [" Yes", " Yes"]')],
        "pointwise.toml",
        "options",
        "must differ",
    ),
    (
        [POINTWISE, ("templates/pointwise.toml", 'answer_prefix = "Answer:"', "answer_prefix = 7")],
        "pointwise.toml",
        "answer_prefix",
        "must be a string",
    ),
    (
        [("templates/critique-examples.toml", "\n[[example]]\n", "\nexamples = 2\n[[example]]\n")],
        "critique-examples.toml",
        "examples",
        "unknown key (known: example)",
    ),
    (
        [("../principles/violence.toml", 'id = "violence"', 'id = "Violence"')],
        "violence.toml",
        "id",
        "lowercase letters, digits and dashes",
    ),
]


@pytest.mark.parametrize("edits, file, key, words", BROKEN, ids=[b[2] for b in BROKEN])
def test_each_broken_file_is_named_with_its_key(copy_tree, edits, file, key, words):
    for rel, old, new in edits:
        _edit(copy_tree / "constitution" / rel, old, new)
    with pytest.raises(PrincipleError) as e:
        load_constitution(str(copy_tree / "constitution" / "default.toml"))
    named = [p for p in e.value.problems if p.file.endswith(file) and p.key == key]
    assert named and words in named[0].message, e.value.problems


def test_a_file_that_is_not_utf8_is_named(copy_tree):
    (copy_tree / "principles" / "hate.toml").write_bytes(b'id = "hate"\ntitle = "\xff\xfe"\n')
    problems = check_all(copy_tree / "principles", copy_tree / "constitution")
    assert any(p.file.endswith("hate.toml") and p.key == "file" and "UTF-8" in p.message for p in problems)
