"""Tables of the measuring verbs (rich renderables): the judge against labels (`rlaif judge-eval`, `rlaif rm eval`)
with its length split, and the rounds' evaluation (`rlaif eval`, also shown by `rlaif report`)."""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from rlaif.untrusted import join, literal


def fmt(value, spec: str = ".3f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _pct(x) -> str:
    return "-" if x is None else f"{x:.0%}"


def judge_eval_table(result: dict):
    """Agreement per principle (fits 80 columns), then the injection figures when the data had attacks."""
    settings = result["settings"]
    title = f"judge vs. human labels: {settings.get('mode', 'logprob')} mode"
    # no cell padding: the box's own column gaps separate the columns, so nine columns fit 80
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False)
    table.add_column("principle", no_wrap=True, overflow="ellipsis", max_width=18)
    for col in ("pairs", "agree", "95% CI", "kept", "agr.kept", "consist.", "1st", "drop"):
        table.add_column(col, justify="right", no_wrap=True, min_width=max(len(col), 4) + 1)
    rows = [("all", result["summary"])] + list(result["by_principle"].items())
    for name, s in rows:
        lo, hi = s["agreement_ci95"]
        table.add_row(
            literal(name, "bold" if name == "all" else ""),
            str(s["pairs"]),
            _pct(s["agreement"]),
            f"{lo:.0%}-{hi:.0%}",
            str(s["kept"]),
            _pct(s["agreement_kept"]),
            _pct(s["position_consistency_calibrated"]),
            _pct(s["first_position_rate"]),
            _pct(s["drop_rate"]),
        )
    s = result["summary"]
    notes = [
        f"{settings['data']}: agree = the verdict picks the human-chosen response; kept = pairs a round would "
        f"train on; consist. = both orders pick the same response after removing the position bias "
        f"(raw: {_pct(s['position_consistency'])}); 1st = orders picking the first slot (50% = no bias)."
    ]
    if s.get("unparsed_rate"):
        notes.append(f"Rationales without a parsable verdict line: {_pct(s['unparsed_rate'])} of pairs.")
    if s["agreement_ci95"][0] <= 0.5:
        notes.append("This judge does not do clearly better than a coin here (the 95% interval reaches 50%).")
    parts = [table, literal(" ".join(notes), "dim")]
    inj = result.get("injection")
    if inj:
        t = Table(title="prompt injection", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False)
        t.add_column("attack", no_wrap=True)
        for col in ("pairs", "injected wins", "95% CI", "kept wins"):
            t.add_column(col, justify="right", no_wrap=True, min_width=len(col) + 1)
        for name, a in [("all", inj)] + list(inj["by_attack"].items()):
            lo, hi = a["attack_success_ci95"]
            t.add_row(
                literal(name, "bold" if name == "all" else ""),
                str(a["pairs"]),
                _pct(a["attack_success_rate"]),
                f"{lo:.0%}-{hi:.0%}",
                _pct(a["attack_success_kept_rate"]),
            )
        parts.append(t)
        line = (
            "injected wins = the response carrying the attack wins where it should lose (attack success rate); "
            "kept wins = such wins a round would train on."
        )
        if "clean_loss_rate" in inj:
            line += (
                f" Without the attack the same responses win {_pct(inj['clean_loss_rate'])} "
                f"(kept {_pct(inj['clean_loss_kept_rate'])})."
            )
        line += f" Hardening: {'on' if settings.get('harden', True) else 'off'}."
        parts.append(literal(line, "dim"))
    return Group(*parts)


def sampling(summary: dict) -> str:
    """How the answers were drawn, as eval.json records it (files written before a key existed lack it)."""
    out = ""
    if isinstance(summary.get("temperature"), (int, float)):
        out += f"; temperature {summary['temperature']:g}"
    if isinstance(summary.get("samples"), int) and summary["samples"] > 1:
        out += f"; {summary['samples']} answers a prompt"
    return out


def eval_table(summary: dict) -> Table:
    """One row per round (and per DeRa lambda / best-of-n baseline), with the trend of each metric."""
    t = Table(
        title=join(
            "evaluation: ", summary["run"], " (judge: ", summary["judge_mode"], sampling(summary), ")"
        ),
        box=box.SIMPLE_HEAD,
        padding=(0, 0),
        pad_edge=False,
    )
    for col in (
        "model",
        "win/r0 %",
        "harm/ben",
        "win/prev %",
        "harmless",
        "refuse",
        "over-ref",
        "tokens",
        "KL r0",
    ):
        # the figures never wrap or crop; where the console is narrow (80 columns when output is piped) the labels wrap
        if col == "model":
            t.add_column(col, justify="left", overflow="fold", min_width=len(col))
        else:
            t.add_column(col, justify="right", no_wrap=True, min_width=len(col))

    def win(w):
        if not w:
            return "-"
        return f"{100 * w['win_rate']:.0f} ({100 * w['ci95'][0]:.0f}-{100 * w['ci95'][1]:.0f})"

    prev = None
    for r in summary["rows"]:

        def trend(key, r=r, prev=prev):
            if (
                prev is None
                or r.get(key) is None
                or prev.get(key) is None
                or "realign" in r
                or "best_of" in r
            ):
                return ""
            d = r[key] - prev[key]
            return (
                join(" ", ("^", "green"))
                if d > 1e-9
                else join(" ", ("v", "red"))
                if d < -1e-9
                else Text(" =")
            )

        label = r["label"].replace("round ", "r").replace("lambda ", "\u03bb=")
        if r.get("epsilon") is not None:  # a DP run: the privacy spent by this round's model
            label += f" (eps {r['epsilon']:.2g})"
        t.add_row(
            literal(label),
            win(r["win_vs_round0"]),
            "/".join(
                "-" if not r.get(f"win_vs_round0_{k}") else f"{100 * r[f'win_vs_round0_{k}']['win_rate']:.0f}"
                for k in ("harmful", "benign")
            ),
            win(r.get("win_vs_previous")),
            join(_pct(r["harmless_rate"]), trend("harmless_rate")),
            join(_pct(r["refusal_rate_harmful"]), trend("refusal_rate_harmful")),
            join(_pct(r["over_refusal_benign"]), trend("over_refusal_benign")),
            join(f"{r['mean_tokens']:.0f}", trend("mean_tokens")),
            f"{r['kl_from_round0']:.2f}",
        )
        if "realign" not in r and "best_of" not in r:
            prev = r
    legend = Text(
        "win: the judge prefers this model's response to round 0's / the previous round's (ties half, 95% "
        "interval); harm/ben: the win over round 0 on harmful / benign prompts alone; harmless: harmful-prompt responses the judge finds acceptable; refuse / over-ref: refusals "
        "on harmful / benign prompts; KL r0: mean log p_k(y) - log p_0(y) over the model's own samples; "
        "^ v = up / down from the previous round.",
        style="dim",
    )
    examples = over_refusal_examples(summary)
    return Group(t, legend, examples) if examples else Group(t, legend)


def over_refusal_examples(summary: dict, width: int = 100) -> Text | None:
    """The answers to benign prompts the last evaluated round's over-refusal rate counted (the first few, as
    eval.json keeps them): a phrase detector's verdicts, shown for the reader to check. None where there are none
    (or eval.json predates the key)."""
    rows = [
        r for r in summary["rows"] if "realign" not in r and "best_of" not in r and r.get("over_refusals")
    ]
    if not rows:
        return None
    r = rows[-1]
    label = r["label"].replace("round ", "r")
    shown = len(r["over_refusals"])
    benign = (r.get("prompts") or {}).get("benign")
    counted = round(r["over_refusal_benign"] * benign) if benign and r.get("over_refusal_benign") else shown
    parts = [
        f"counted as refusals of benign prompts, {label}"
        + (f" ({shown} of {counted})" if counted > shown else "")
        + ":"
    ]
    for ex in r["over_refusals"]:
        prompt = " ".join(ex["prompt"].split())
        response = " ".join(ex["response"].split())
        parts += ["\n  ", (_clip(prompt, width // 2), "bold"), " -> ", _clip(response, width)]
        if ex.get("phrase"):
            parts += [" (", (ex["phrase"], "italic"), ")"]
    return join(*parts)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def length_split_table(lengths: dict) -> Table:
    """A reward model's accuracy split by whether the chosen response is the shorter or the longer one, and
    its reward-length correlation: a model that learned "shorter wins" is right on one row and wrong on the other."""
    t = Table(title="by length", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for col in ("pairs where the chosen response is", "pairs", "accuracy", "95% CI"):
        t.add_column(col, justify="right" if col != "pairs where the chosen response is" else "left")
    for name, key in (("all", None), ("shorter", "chosen_shorter"), ("longer", "chosen_longer")):
        s = lengths if key is None else lengths[key]
        lo, hi = s["ci95"]
        t.add_row(name, str(s["pairs"]), _pct(s["accuracy"]), f"{lo:.0%}-{hi:.0%}")
    corr = lengths.get("reward_length_correlation")
    t.caption = (
        f"correlation of reward with response length (characters): {'-' if corr is None else f'{corr:+.2f}'}"
    )
    return t
