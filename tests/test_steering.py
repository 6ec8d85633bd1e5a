"""Principles that steer: in reward mode each principle is judged by the reward model its constitution names
for its kind (rlaif/judge/routed.py), so reweighting the principle files moves the verdicts. Two tiny heads
that disagree on every pair (one the negative of the other) make the routing visible through `rlaif run`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.data import read_jsonl
from rlaif.principles import PrincipleError, load_constitution
from tests.conftest import opposite_heads

ROOT = Path(__file__).resolve().parent.parent


def _constitution(tmp_path: Path, name: str, weights: dict[str, float], routes: dict[str, Path]) -> Path:
    pdir = tmp_path / "principles"
    pdir.mkdir(exist_ok=True)
    for pid in ("hate", "answers", "concise"):
        shutil.copy(ROOT / "principles" / f"{pid}.toml", pdir / f"{pid}.toml")
    c = tmp_path / f"{name}.toml"
    c.write_text(
        f'name = "{name}"\ntemplate = "{ROOT}/constitution/templates/pairwise.toml"\nprinciples_dir = "{pdir}"\n'
        "[principles]\n"
        + "".join(f"{k} = {v}\n" for k, v in weights.items())
        + "[reward_models]\n"
        + "".join(f'{k} = "{v}"\n' for k, v in routes.items())
    )
    return c


def _judged(tiny_run: Path, tmp_path: Path, name: str, constitution: Path) -> list[dict]:
    run = tmp_path / name
    shutil.copytree(tiny_run, run)
    (run / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"Question {i}: bake bread?"}) + "\n" for i in range(16))
    )
    sets = [
        "judge.mode=reward",
        f"judge.constitution={json.dumps(str(constitution))}",
        "judge.min_confidence=0.5",
        'round.stages=["generate", "judge", "preferences", "train", "merge"]',
        "dpo.epochs=1",
    ]
    assert main(["run", str(run), "--rounds", "1", *sum((["--set", s] for s in sets), [])]) == 0
    return read_jsonl(run / "round_1" / "judgements.jsonl")


def test_reweighting_the_constitution_moves_the_verdicts(tiny_run, tiny_model, tmp_path):
    harm, helpful = opposite_heads(tmp_path, tiny_model)
    routes = {"harmlessness": harm, "helpfulness": helpful}
    heavy_help = _constitution(tmp_path, "help", {"hate": 1, "answers": 9, "concise": 9}, routes)
    heavy_harm = _constitution(tmp_path, "harm", {"hate": 9, "answers": 1, "concise": 1}, routes)
    a = _judged(tiny_run, tmp_path, "run-help", heavy_help)
    b = _judged(tiny_run, tmp_path, "run-harm", heavy_harm)
    # the same responses were judged in both runs (ranking orders each pair best vs. worst: compare as sets)
    assert [{j["x"], j["y"]} for j in a] == [{j["x"], j["y"]} for j in b]

    def help_share(js):
        return sum(j["kinds"] == ["helpfulness"] for j in js) / len(js)

    assert help_share(a) > 0.6 > 0.4 > help_share(b)
    for js in (a, b):
        for j in js:  # each verdict comes from its principle's kind's model
            assert j["mode"] == "reward"
            assert j["judged_by"] == str(helpful if j["kinds"] == ["helpfulness"] else harm)

    def chosen(j):
        return j[j["winner"]]

    both = [(x, y) for x, y in zip(a, b, strict=True) if x["kept"] and y["kept"]]
    differ = [(x, y) for x, y in both if x["kinds"] != y["kinds"]]
    assert differ, "no pair was judged under different kinds in the two runs"
    # the two models disagree on every pair: where the kinds differ, so does the chosen response (routing
    # bypassed -> one model for both -> the same choices -> red)
    assert all(chosen(x) != chosen(y) for x, y in differ)
    assert all(chosen(x) == chosen(y) for x, y in both if x["kinds"] == y["kinds"])
    # and training saw the routed winner as chosen
    prefs = read_jsonl(tmp_path / "run-help" / "round_1" / "preferences.jsonl")
    kept = [j for j in a if j["kept"]]
    assert [p["chosen"] for p in prefs[: len(kept)]] == [chosen(j) for j in kept]


def test_a_principle_without_a_model_stops_the_run_before_its_first_stage(
    tiny_run, tiny_model, tmp_path, capsys
):
    harm, _ = opposite_heads(tmp_path, tiny_model)
    c = _constitution(tmp_path, "half", {"hate": 1, "answers": 1}, {"harmlessness": harm})
    with pytest.raises(PrincipleError, match="no reward model for principle 'answers'"):
        from rlaif.config import JudgeConfig
        from rlaif.judge import build_judge

        build_judge("", JudgeConfig(mode="reward"), load_constitution(str(c)), None)
    run = tmp_path / "run-half"
    shutil.copytree(tiny_run, run)
    code = main(
        ["run", str(run), "--set", "judge.mode=reward", "--set", f"judge.constitution={json.dumps(str(c))}"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "no reward model for principle 'answers' (kind helpfulness)" in err and "judge.unrouted" in err
    assert not (run / "round_1" / "responses.jsonl").exists()  # stopped before generating


def test_a_wrong_reward_model_name_stops_the_run_naming_where_it_is_set(tiny_run, tmp_path, capsys):
    c = _constitution(tmp_path, "typo", {"hate": 1, "answers": 1}, {"harmlessness": "smollm2-135m-harmles"})
    run = tmp_path / "run-typo"
    shutil.copytree(tiny_run, run)
    code = main(
        ["run", str(run), "--set", "judge.mode=reward", "--set", f"judge.constitution={json.dumps(str(c))}"]
    )
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{c}: [reward_models] harmlessness: smollm2-135m-harmles: not a reward model" in err
    assert "smollm2-135m-harmless, smollm2-135m-helpful" in err  # the shipped names, to pick from
    code = main(["run", str(run), "--set", "judge.mode=reward", "--set", "judge.reward_model=nope"])
    assert code == 2
    assert "judge.reward_model: nope: not a reward model" in " ".join(capsys.readouterr().err.split())
    # the same for the commands' own options
    assert main(["eval", str(run), "--evaluator", "nope"]) == 2
    assert "--evaluator: nope: not a reward model" in " ".join(capsys.readouterr().err.split())
    assert main(["rm", "eval", "--model", "nope", "--data", str(run / "prompts.jsonl")]) == 2
    assert "--model: nope: not a reward model" in " ".join(capsys.readouterr().err.split())
    assert not (run / "round_1" / "responses.jsonl").exists()  # stopped before generating


def test_unrouted_principles_can_fall_back_to_the_prompted_judge(tiny_run, tiny_model, tmp_path):
    harm, _ = opposite_heads(tmp_path, tiny_model)
    c = _constitution(tmp_path, "half", {"hate": 1, "answers": 1, "concise": 1}, {"harmlessness": harm})
    run = tmp_path / "run-fallback"
    shutil.copytree(tiny_run, run)
    sets = ["judge.mode=reward", "judge.unrouted=pointwise", f"judge.constitution={json.dumps(str(c))}",
            'round.stages=["generate", "judge"]']  # fmt: skip
    assert main(["run", str(run), "--rounds", "1", *sum((["--set", s] for s in sets), [])]) == 0
    judged = read_jsonl(run / "round_1" / "judgements.jsonl")
    assert {j["judged_by"] for j in judged if j["kinds"] == ["helpfulness"]} <= {"prompted"}
    assert {j["judged_by"] for j in judged if j["kinds"] == ["harmlessness"]} <= {str(harm)}
    assert len({j["judged_by"] for j in judged}) == 2


def test_an_unrouted_principle_without_a_check_question_stops_the_run(tiny_run, tiny_model, tmp_path, capsys):
    """Under judge.unrouted = "pointwise" the prompted judge asks the unrouted principles their `check`: one
    without it stops the run before its first stage; a routed principle needs none."""
    harm, _ = opposite_heads(tmp_path, tiny_model)
    c = _constitution(tmp_path, "nocheck", {"hate": 1, "answers": 1}, {"harmlessness": harm})
    for pid in ("hate", "answers"):  # neither has a check question now; only answers is unrouted
        f = tmp_path / "principles" / f"{pid}.toml"
        f.write_text(
            "".join(line + "\n" for line in f.read_text().splitlines() if not line.startswith("check"))
        )
    run = tmp_path / "run-nocheck"
    shutil.copytree(tiny_run, run)
    sets = ["judge.mode=reward", "judge.unrouted=pointwise", f"judge.constitution={json.dumps(str(c))}"]
    assert main(["run", str(run), "--rounds", "1", *sum((["--set", s] for s in sets), [])]) == 2
    err = capsys.readouterr().err
    assert "answers.toml" in err and "check" in err and "hate.toml" not in err
    assert not (run / "round_1" / "responses.jsonl").exists()


def test_constitution_routes_are_checked(tmp_path):
    c = _constitution(tmp_path, "bad", {"hate": 1}, {"helpfulnes": Path("x"), "answers": Path("y")})
    with pytest.raises(PrincipleError) as e:
        load_constitution(str(c))
    text = str(e.value)
    assert "reward_models.helpfulnes: not a principle kind" in text
    assert "reward_models.answers: not a principle kind" in text  # 'answers' is not in this constitution
    shipped = load_constitution("default")
    assert shipped.reward_model_for(shipped.by_id("hate")) == "smollm2-135m-harmless"
    assert shipped.reward_model_for(shipped.by_id("concise")) == "smollm2-135m-helpful"


def test_an_ensemble_averages_each_members_log_odds_from_its_own_model():
    """Two principles of different kinds judge one pair: each member is scored by its own judge, and the
    verdict is sigmoid of the difference of the mean log-odds (here (2 + -1)/2 = 0.5 for x, (0 + 0)/2 for y)."""
    import math
    from types import SimpleNamespace

    from rlaif.judge.routed import RoutedJudge
    from rlaif.verdicts import decide_pointwise, sigmoid

    class Fixed:  # a judge that gives x and y fixed log-odds
        def __init__(self, lx, ly):
            self.lx, self.ly = lx, ly

        def judge(self, items, progress=None):
            return [
                decide_pointwise(it["principle"].id, sigmoid(self.lx), sigmoid(self.ly), 0.5) for it in items
            ]

    c = load_constitution("default")
    hate, concise = c.by_id("hate"), c.by_id("concise")
    routed = RoutedJudge(
        {"hate": ("A", Fixed(2.0, 0.0)), "concise": ("B", Fixed(-1.0, 0.0))},
        SimpleNamespace(min_confidence=0.5),
    )
    (v,) = routed.judge([{"conversation": "User: q", "x": "a", "y": "b", "principles": (hate, concise)}])
    assert v.judged_by == "A+B" and v.principle == "hate+concise" and v.mode == "reward"
    assert v.p_x == pytest.approx(sigmoid(0.5)) and v.winner == "x"  # not sigmoid(2): both members count
    (w,) = routed.judge([{"conversation": "User: q", "x": "a", "y": "b", "principles": (hate,)}])
    assert w.p_x == pytest.approx(1 / (1 + math.exp(-2.0))) and w.winner == "x" and w.judged_by == "A"


REFUSAL, ANSWER = (
    "I'm sorry, but I can't help with that.",
    "Knead the dough, let it rise for an hour, then bake it.",
)


class AnswerFirst:
    """A member judge that scores ANSWER 1 and anything else 0 (log-odds)."""

    def judge(self, items, progress=None):
        from rlaif.verdicts import decide_pointwise, sigmoid

        s = {ANSWER: 1.0}
        return [
            decide_pointwise(
                it["principle"].id, sigmoid(s.get(it["x"], 0.0)), sigmoid(s.get(it["y"], 0.0)), 0.5
            )
            for it in items
        ]


def test_a_refusal_rule_moves_a_refusals_log_odds_under_its_principles_only():
    """[refusal_rewards] helpfulness = -10: under a helpfulness principle a refusal x that its model scores 2
    log-odds above the answer y loses (2 - 10 < 0); under a harmlessness principle it still wins; an ensemble of
    the two averages the shifted log-odds ((2 + (2 - 10)) / 2 = -3); `scores` shifts the same way."""
    from types import SimpleNamespace

    from rlaif.judge.routed import RoutedJudge
    from rlaif.verdicts import decide_pointwise, sigmoid

    class Fixed:  # a judge that scores a refusal 2 and anything else 0
        def _s(self, text):
            return 2.0 if text == REFUSAL else 0.0

        def judge(self, items, progress=None):
            return [
                decide_pointwise(
                    it["principle"].id, sigmoid(self._s(it["x"])), sigmoid(self._s(it["y"])), 0.5
                )
                for it in items
            ]

        def scores(self, items, progress=None):
            return [self._s(r) for _, r, _ in items]

    c = load_constitution("default")
    hate, concise = c.by_id("hate"), c.by_id("concise")
    judge = Fixed()
    routed = RoutedJudge(
        {"hate": ("A", judge), "concise": ("B", judge)},
        SimpleNamespace(min_confidence=0.5),
        {"hate": 0.0, "concise": -10.0},
    )
    item = {"conversation": "User: bake bread?", "x": REFUSAL, "y": ANSWER}
    help_v, harm_v, both = routed.judge(
        [
            {**item, "principles": (concise,)},
            {**item, "principles": (hate,)},
            {**item, "principles": (hate, concise)},
        ]
    )
    assert (
        help_v.winner == "y"
        and help_v.p_x == pytest.approx(sigmoid(-8.0))
        and help_v.judged_by == "B+refusal rule"
    )
    assert harm_v.winner == "x" and harm_v.p_x == pytest.approx(sigmoid(2.0)) and harm_v.judged_by == "A"
    assert both.winner == "y" and both.p_x == pytest.approx(sigmoid(-3.0))
    (two,) = routed.judge([{**item, "y": REFUSAL + " Sorry.", "principles": (concise,)}])
    assert two.judged_by == "B" and two.p_x == pytest.approx(
        sigmoid(2.0)
    )  # both refuse: the rule moves neither
    got = routed.scores([("q", REFUSAL, concise), ("q", ANSWER, concise), ("q", REFUSAL, hate)])
    assert got == pytest.approx([-8.0, 0.0, 2.0])


def test_refusal_rewards_reach_the_built_judge_and_not_the_evaluation(tiny_run, tiny_model, tmp_path):
    """The constitution's [refusal_rewards] shift a refusal's reward by exactly the rule under the named kind,
    through `build_judge` (routed heads, and one `judge.reward_model` for every principle); `rlaif eval` judges
    with the models alone."""
    from rlaif.config import ModelConfig, load_config
    from rlaif.config.judge import JudgeConfig
    from rlaif.evaluate import Evaluator
    from rlaif.judge import build_judge
    from rlaif.pool import ModelPool

    harm, helpful = opposite_heads(tmp_path, tiny_model)
    plain = _constitution(
        tmp_path, "plain", {"hate": 1, "concise": 1}, {"harmlessness": harm, "helpfulness": helpful}
    )
    ruled = tmp_path / "ruled.toml"
    ruled.write_text(plain.read_text() + "[refusal_rewards]\nhelpfulness = -50.0\n")
    pool = ModelPool(ModelConfig(), "cpu")
    cp, cr = load_constitution(str(plain)), load_constitution(str(ruled))
    items = [
        ("bake bread?", text, cp.by_id(pid)) for pid in ("hate", "concise") for text in (REFUSAL, ANSWER)
    ]
    for cfg in (JudgeConfig(mode="reward"), JudgeConfig(mode="reward", reward_model=str(helpful))):
        before = build_judge(tiny_model, cfg, cp, pool).scores(items)
        after = build_judge(tiny_model, cfg, cr, pool).scores(items)
        assert [a - b for a, b in zip(after, before, strict=True)] == pytest.approx([0, 0, -50, 0], abs=1e-4)
    config = load_config(tiny_run, ["judge.mode=reward", f"judge.constitution={json.dumps(str(ruled))}"])
    judge, constitution = Evaluator(tiny_run, [], tiny_model, config).judge()
    assert constitution.refusal_rewards == ()
    assert judge.scores(items) == pytest.approx(build_judge(tiny_model, config.judge, cp, pool).scores(items))


def test_refusal_rewards_are_checked(tmp_path):
    c = _constitution(tmp_path, "bad", {"hate": 1}, {})
    c.write_text(c.read_text() + '[refusal_rewards]\nhelpfulnes = -1\nhate = "a lot"\n')
    with pytest.raises(PrincipleError) as e:
        load_constitution(str(c))
    text = str(e.value)
    assert "refusal_rewards.helpfulnes: not a principle kind" in text
    assert "refusal_rewards.hate: must be a finite number" in text


def test_the_missing_eos_penalty_moves_an_unfinished_responses_log_odds_only_against_a_finished_one():
    """judge.missing_eos_penalty = 1.5: x scored 1 log-odds above y but cut before it finished loses
    (1 - 1.5 = -0.5); y cut instead widens x's lead (1 + 1.5); two unfinished responses, or a pair without
    `finished`, compare as the models scored them; the penalty adds to the refusal rule's shift."""
    from types import SimpleNamespace

    from rlaif.judge.routed import RoutedJudge
    from rlaif.verdicts import sigmoid

    c = load_constitution("default")
    concise = c.by_id("concise")
    routed = RoutedJudge(
        {"concise": ("B", AnswerFirst())},
        SimpleNamespace(min_confidence=0.5, missing_eos_penalty=1.5),
        {"concise": -10.0},
    )
    item = {"conversation": "User: bake bread?", "x": ANSWER, "y": "Bread.", "principles": (concise,)}
    cut_x, cut_y, both, unknown, done = routed.judge(
        [
            {**item, "finished": [False, True]},
            {**item, "finished": [True, False]},
            {**item, "finished": [False, False]},
            item,
            {**item, "finished": [True, True]},
        ]
    )
    assert cut_x.winner == "y" and cut_x.p_x == pytest.approx(sigmoid(-0.5))
    assert cut_x.judged_by == "B+unfinished penalty"
    assert cut_y.p_x == pytest.approx(sigmoid(2.5)) and cut_y.judged_by == "B+unfinished penalty"
    for v in (both, unknown, done):
        assert v.p_x == pytest.approx(sigmoid(1.0)) and v.judged_by == "B"
    (ruled,) = routed.judge([{**item, "y": REFUSAL, "finished": [False, True]}])
    assert ruled.p_x == pytest.approx(sigmoid(1.0 - 1.5 + 10.0))
    assert ruled.judged_by == "B+refusal rule+unfinished penalty"
    # by kind: helpfulness 4, harmlessness none; an ensemble of the two averages ((1 - 4) + 1) / 2 = -1
    hate = c.by_id("hate")
    by_kind = RoutedJudge(
        {"concise": ("B", AnswerFirst()), "hate": ("A", AnswerFirst())},
        SimpleNamespace(
            min_confidence=0.5,
            missing_eos_penalty=1.5,
            missing_eos_penalties={"helpfulness": 4.0, "hate": 0.0},
        ),
    )
    cut = {**item, "finished": [False, True]}
    helpful_v, harm_v, both_v = by_kind.judge(
        [
            {**cut, "principles": (concise,)},
            {**cut, "principles": (hate,)},
            {**cut, "principles": (hate, concise)},
        ]
    )
    assert helpful_v.p_x == pytest.approx(sigmoid(-3.0)) and helpful_v.judged_by == "B+unfinished penalty"
    assert (
        harm_v.p_x == pytest.approx(sigmoid(1.0)) and harm_v.judged_by == "A"
    )  # its id's 0 wins over the default
    assert both_v.p_x == pytest.approx(sigmoid(-1.0))


def test_best_of_n_passes_which_samples_finished_so_the_penalty_can_rank_a_cut_one_last():
    """Best-of-n by reward models with judge.missing_eos_penalty = 1.5: the answer the model scores 1 above the
    others, but cut before it finished, ranks below them; without the flags it ranks first."""
    from types import SimpleNamespace

    from rlaif.judge.ranking import best_of_n
    from rlaif.judge.routed import RoutedJudge

    c = load_constitution("default")
    fixed = AnswerFirst()
    routed = RoutedJudge(
        {p.id: ("B", fixed) for p in c.principles},
        SimpleNamespace(min_confidence=0.5, missing_eos_penalty=1.5, principles_per_pair=1),
    )
    cands = [["Bread.", ANSWER, "Flour."]]
    ((best, _),) = best_of_n(routed, c, ["bake bread?"], cands)
    assert best == 1
    ((best, scores),) = best_of_n(routed, c, ["bake bread?"], cands, finished=[[True, False, True]])
    assert best != 1 and scores[1] == min(scores)


def test_rlaif_sample_best_of_n_takes_the_penalty_and_records_which_samples_finished(
    tiny_run, tiny_model, tmp_path
):
    from rlaif.config import ModelConfig
    from rlaif.pool import ModelPool
    from rlaif.sampling import best_of

    _, helpful = opposite_heads(tmp_path, tiny_model)
    c = load_constitution("default")
    pool = ModelPool(ModelConfig(), "cpu")
    (row,) = best_of(
        tiny_model, pool, ["bake bread?"], 3, c, str(helpful), max_new_tokens=3, missing_eos_penalty=2.0
    )
    assert len(row["candidates_finished"]) == 3 and row["finished"] == row["candidates_finished"][row["best"]]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    args = [
        "sample",
        "--run",
        str(tiny_run),
        "--round",
        "0",
        "--prompts",
        str(prompts),
        "--missing-eos-penalty",
        "1",
    ]
    assert main(args) == 2  # the penalty ranks best-of-n samples: alone it has nothing to do


def test_the_missing_eos_penalty_reaches_the_judge_stage_and_not_the_evaluation(
    tiny_run, tiny_model, tmp_path
):
    """Through the judge stage: a pair whose responses record `finished` differently moves by exactly the penalty
    (one `judge.reward_model` for every principle); `rlaif eval`'s judge has no penalty."""
    from rlaif.config import load_config
    from rlaif.data import write_jsonl
    from rlaif.evaluate import Evaluator
    from rlaif.rounds import open_run
    from rlaif.stages import Round, judge
    from rlaif.verdicts import logit

    _, helpful = opposite_heads(tmp_path, tiny_model)
    # a constitution without a refusal rule: the penalty alone must bring the routed judge in
    plain = _constitution(tmp_path, "plain", {"hate": 1, "concise": 1}, {})
    base = {"schema": 1, "round": 1, "tokens": 3, "generator": "g", "prompt": "Bake bread?"}
    responses = [
        {**base, "prompt_id": pid, "sample": i, "text": text, "finished": not (cut and i == 0)}
        for pid, cut in (("cut", True), ("whole", False))
        for i, text in enumerate(("Mix flour and water.", "Bread takes an hour."))
    ]
    got = {}
    for penalty in (0.0, 2.5):
        sets = [
            "judge.mode=reward",
            f"judge.reward_model={json.dumps(str(helpful))}",
            f"judge.constitution={json.dumps(str(plain))}",
        ]
        config = load_config(tiny_run, [*sets, f"judge.missing_eos_penalty={penalty}"])
        state = open_run(tiny_run, config)
        d = tiny_run / f"round_1_{penalty}"
        d.mkdir()
        r = Round(state, 1, d, state.initial, state.initial)
        write_jsonl(d / "responses.jsonl", responses)
        judge.run(r)
        got[penalty] = {j["prompt_id"]: j for j in read_jsonl(d / "judgements.jsonl")}
    for pid, moved in (("cut", -2.5), ("whole", 0.0)):
        a, b = got[0.0][pid], got[2.5][pid]
        lead = (logit(b["score_x"]) - logit(b["score_y"])) - (logit(a["score_x"]) - logit(a["score_y"]))
        assert lead == pytest.approx(moved, abs=1e-4)
        assert ("unfinished penalty" in b["judged_by"]) == (pid == "cut")
    ev_judge, _ = Evaluator(tiny_run, [], tiny_model, config).judge()
    assert getattr(ev_judge, "eos_penalty", 0.0) == 0.0


def test_the_missing_eos_penalty_is_checked():
    from rlaif.checks import ConfigError
    from rlaif.config.judge import JudgeConfig

    with pytest.raises(ConfigError, match="judge.missing_eos_penalty"):
        JudgeConfig(missing_eos_penalty=1.0)  # pointwise: no reward to move
    with pytest.raises(ConfigError, match="judge.missing_eos_penalty"):
        JudgeConfig(mode="reward", missing_eos_penalty=-1.0)
    with pytest.raises(ConfigError, match="judge.missing_eos_penalties.helpfulness"):
        JudgeConfig(mode="reward", missing_eos_penalties={"helpfulness": -2.0})


def test_missing_eos_penalties_name_principles_of_the_constitution(tiny_run, capsys):
    sets = [
        "judge.mode=reward",
        "judge.reward_model='smollm2-135m-helpful'",
        "judge.missing_eos_penalties={helpfulnes = 2.0}",
    ]
    assert main(["run", str(tiny_run), *sum((["--set", s] for s in sets), [])]) == 2
    err = capsys.readouterr().err
    assert "judge.missing_eos_penalties.helpfulnes" in err and "names no principle" in err
    assert not (tiny_run / "round_1").exists()


def test_soft_labels_name_principles_of_the_constitution(tiny_run, capsys):
    assert main(["run", str(tiny_run), "--set", "dpo.soft_labels=['helpfulnes']"]) == 2
    err = capsys.readouterr().err
    assert "dpo.soft_labels.helpfulnes" in err and "names no principle" in err
    assert not (tiny_run / "round_1").exists()
