"""The run report's legends and tables, from a run's config and metrics alone (no model)."""

from rich.console import Console

from rlaif.report import loss_legend, verdicts_table


def render(renderable, width: int) -> str:
    console = Console(record=True, width=width)
    console.print(renderable)
    return console.export_text()


def test_the_loss_legend_follows_the_dpo_config():
    plain = loss_legend({})
    assert (
        "sigmoid loss at the first -> last step" in plain
        and "ln 2 = 0.693 (every round's first step)" in plain
    )
    assert "NLL" not in plain
    # the NLL term (one weight, or weights by kind) adds to the first step's value: no longer "ln 2 every round"
    for dpo in ({"nll_weight": 0.3}, {"nll_weights": {"helpfulness": 1.0}}):
        text = loss_legend(dpo)
        assert "plus the NLL term" in text and "every round's first step" not in text
    assert "NLL" not in loss_legend({"nll_weights": {"helpfulness": 0.0}})
    # with the initial model as reference only round 1 starts at policy = reference
    anchored = loss_legend({"reference": "initial", "beta": 0.3})
    assert "only round 1 starts there" in anchored and "every round's first step" not in anchored
    assert "1/(4 beta^2) = 25" in loss_legend({"loss": "ipo", "beta": 0.1})


def test_the_verdicts_table_keeps_each_model_with_its_share_on_an_80_column_terminal():
    judge = {
        "by_kind": {"harmlessness": 20, "helpfulness": 60},
        "by_model": {"smollm2-135m-harmless": 20, "smollm2-135m-helpful": 60},
        "guided": {"harmlessness": {"won": 17, "lost": 3}, "helpfulness": {"won": 5, "lost": 7}},
    }
    text = render(verdicts_table([{"round": 1, "judge": judge}]), width=80)
    lines = text.splitlines()
    for entry in (
        "harmlessness 25%",
        "helpfulness 75%",
        "smollm2-135m-harmless 25%",
        "smollm2-135m-helpful 75%",
        "harmlessness 17/20",
        "helpfulness 5/12",
    ):
        assert any(entry in line for line in lines), (entry, text)


def test_the_principles_table_says_which_reward_model_judges_each_principle():
    import dataclasses

    from rlaif.principles import load_constitution
    from rlaif.report import principles_table

    c = load_constitution("default")
    text = " ".join(render(principles_table(c), width=200).split())
    harm = [p.id for p in c.principles if p.kind == "harmlessness"]
    helpful = [p.id for p in c.principles if p.kind == "helpfulness"]
    assert harm and helpful
    assert f"smollm2-135m-harmless: {', '.join(harm)}" in text
    assert f"smollm2-135m-helpful: {', '.join(helpful)}" in text
    # a principle's own route wins over its kind's; a kind with no model is named as such
    own = dataclasses.replace(
        c, reward_models=(("harmlessness", "smollm2-135m-harmless"), (helpful[0], "my-rm"))
    )
    text = " ".join(render(principles_table(own), width=200).split())
    assert f"my-rm: {helpful[0]}" in text and f"no reward model for {', '.join(helpful[1:])}" in text
