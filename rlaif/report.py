"""Rich renderables for runs and principles. Builders return renderables; only cli.py prints them.

rlaif report runs/demo
"""

from __future__ import annotations

import math
from pathlib import Path

from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rlaif.config import new_names, new_stage_names
from rlaif.data import DataError, read_jsonl
from rlaif.eval_report import eval_table, fmt
from rlaif.layout import completed_rounds, preference_rounds, read_json, round_dir
from rlaif.principles import Constitution
from rlaif.privacy import ledger_summary
from rlaif.review.labels import agreement, agreement_by_principle, load_labels
from rlaif.untrusted import join, literal


def principles_table(constitution: Constitution) -> Table:
    total = sum(constitution.weights)
    table = Table(
        title=join("constitution ", repr(constitution.name), ": ", constitution.path), show_lines=False
    )
    table.add_column("id", style="bold")
    table.add_column("kind")
    table.add_column("share", justify="right")
    table.add_column("judge question")
    table.add_column("critique / revision request")
    for p, w in zip(constitution.principles, constitution.weights, strict=True):
        style = "red" if p.kind == "harmlessness" else "green"
        requests = join(
            ("critique: ", "dim"), p.critique or "-", "\n", ("revision: ", "dim"), p.revision or "-"
        )
        table.add_row(
            literal(p.id), literal(p.kind, style), f"{w / total:.0%}", literal(p.question), requests
        )
    table.caption = routes_caption(constitution)
    return table


def routes_caption(constitution: Constitution) -> Text:
    """Which reward model judges each principle under judge.mode = "reward" (the constitution's
    `[reward_models]`, by kind, a principle's id winning over its kind), and which principles have none."""
    by_model: dict[str, list[str]] = {}
    for p in constitution.principles:
        by_model.setdefault(constitution.reward_model_for(p) or "", []).append(p.id)
    unrouted = by_model.pop("", [])
    parts = [f"{model}: {', '.join(ids)}" for model, ids in by_model.items()]
    text = 'judge.mode = "reward" judges with ' + ("; ".join(parts) if parts else "no reward model")
    if unrouted:
        text += (
            f"; no reward model for {', '.join(unrouted)} (judge.unrouted: the run stops, or the prompted judge"
            " judges them)"
        )
    return Text(text, style="dim")


def rounds_table(run_dir: Path, metrics: list[dict]) -> Table:
    table = Table(
        title=join("run ", run_dir),
        box=box.SIMPLE_HEAD,
        padding=(0, 0),
        pad_edge=False,
    )
    for col in ("round", "resp", "tokens", "pairs", "kept", "consistent", "loss", "acc", "time g/j/t"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col) + 1)
    for m in metrics:
        if not any(s in m for s in ("generate", "judge", "dpo")):
            continue  # e.g. a critique + sft round: its own table says what it did
        g, j, t, tm = m.get("generate", {}), m.get("judge", {}), m.get("dpo", {}), m.get("time", {})
        if not t:
            loss = "-"
        else:
            loss = "no pairs" if not t["steps"] else f"{t['loss_first']:.3f}->{t['loss_last']:.3f}"
        if j.get("mode") in ("pointwise", "reward"):
            consistent = "-"  # each response is scored alone: there are no two orders to agree
        elif j:
            consistent = f"{j['position_consistency']:.0%}/{j['position_consistency_calibrated']:.0%}"
        else:
            consistent = "-"
        table.add_row(
            str(m["round"]),
            str(g.get("responses", "-")),
            fmt(g.get("mean_tokens"), ".0f"),
            str(j.get("pairs", "-")),
            str(j.get("kept", "-")),
            consistent,
            loss,
            fmt(t.get("reward_accuracy"), ".0%"),
            "/".join(fmt(tm.get(s), ".0f") for s in ("generate", "judge", "dpo")),
        )
    return table


def rl_table(metrics: list[dict]) -> Table:
    """Policy-gradient rounds: what the reward did, and the signs of reward hacking (length, its correlation
    with the reward, the KL reached)."""
    t = Table(title="rl", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for col in ("round", "algorithm", "reward", "tokens", "reward~length", "KL first->last", "beta"):
        t.add_column(col, justify="right")
    for m in metrics:
        x = m.get("rl")
        if not x:
            continue
        t.add_row(
            str(m["round"]),
            literal(x["algorithm"]),
            fmt(x.get("reward_mean"), ".3f"),
            fmt(x.get("mean_tokens"), ".0f"),
            fmt(x.get("reward_length_correlation"), "+.2f"),
            f"{fmt(x.get('kl_first'), '.3f')}->{fmt(x.get('kl_last'), '.3f')}",
            fmt(x.get("beta_last"), ".3g"),
        )
    t.caption = (
        "reward: mean raw reward of the round's rollouts; reward~length: its correlation with response length "
        "(high = the reward may be won by length); KL: per response, to the round's starting model, first and "
        "last optimizer step"
    )
    return t


def rlhb_table(metrics: list[dict]) -> Table:
    """RLHB rounds: the discriminator's held-out accuracy (real logged triplets against the round's generations,
    and against swapped behaviour texts), how real it finds the generations, and the rl stage's reward, KL and
    length (rlaif/rlhb.py)."""
    t = Table(title="rlhb: the discriminator", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for col in (
        "round",
        "acc real/generated",
        "acc real/swapped",
        "P(real) generated",
        "demos",
        "reward",
        "KL",
        "tokens",
    ):
        t.add_column(col, justify="right")
    for m in metrics:
        d, r = m.get("discriminator"), m.get("rl") or {}
        if not d:
            continue
        t.add_row(
            str(m["round"]),
            fmt(d.get("heldout_accuracy_generated"), ".0%"),
            fmt(d.get("heldout_accuracy_swapped"), ".0%"),
            fmt(d.get("p_real_generated"), ".2f"),
            str(d.get("demonstrations", "-")),
            fmt(r.get("reward_mean"), ".3f"),
            fmt(r.get("kl_last"), ".3f"),
            fmt(r.get("mean_tokens"), ".0f"),
        )
    t.caption = (
        "held out: a seeded share of the log's records and of the round's generations; acc: share on the right "
        "side of P(real) = 0.5; reward: the rl stage's mean discriminator logit; KL: last optimizer step"
    )
    return t


def privacy_table(rows: list[dict]) -> Table:
    """The run's DP trainings (RUN/privacy.json) and the budget spent after each (rlaif/privacy.py)."""
    t = Table(title="differential privacy", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for col in ("round", "stage", "units", "q", "steps", "sigma", "clip", "delta", "epsilon after"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            str(r["round"]),
            literal(r["stage"]),
            str(r["units"]),
            f"{r['sample_rate']:.3g}",
            str(r["steps"]),
            f"{r['noise']:.3g}",
            f"{r['clip']:g}",
            f"{r['delta']:.2g}",
            f"{r['epsilon_after']:.3g}" + ("" if r["poisson"] else " (fixed lots)"),
        )
    t.caption = (
        "epsilon after: the run's (epsilon, delta) spend once that training is done, by the run's accountant"
    )
    return t


def critique_table(metrics: list[dict]) -> Table:
    """Constitutional AI's supervised phase: how many revisions were kept (and why the others were not), and
    the SFT that trained on them."""
    t = Table(title="critique and sft", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for col in ("round", "prompts", "kept", "dropped e/u/l/c", "sft ex.", "sft loss", "tok. acc"):
        t.add_column(col, justify="right", no_wrap=True)
    for m in metrics:
        c, f = m.get("critique") or {}, m.get("sft") or {}
        if not c and not f:
            continue
        d = c.get("dropped") or {}
        kept = f"{c['kept']}/{c['revisions']}" if c else "-"
        if not f:
            loss = "-"
        else:
            loss = "no examples" if not f["steps"] else f"{f['loss_first']:.3f}->{f['loss_last']:.3f}"
        t.add_row(
            str(m["round"]),
            str(c.get("prompts", "-")),
            kept,
            "/".join(str(d.get(k, "-")) for k in ("empty", "unchanged", "too_long", "copies_example"))
            if c
            else "-",
            str(f.get("examples", "-")),
            loss,
            fmt(f.get("token_accuracy"), ".0%"),
        )
    t.caption = (
        "kept: revisions kept of those written (browse: rlaif revisions RUN); dropped: empty / unchanged / too "
        "long / copies a few-shot example; sft ex.: examples trained on (kept revisions, helpful answers, sft.data); sft loss: mean "
        "response-token NLL, first -> last step; tok. acc: share of response tokens the argmax predicts, last epoch"
    )
    return t


def revision_panel(x: dict) -> Panel:
    """One prompt's critique-revision record: the initial response, each pass's critique and revision (kept or
    dropped, with the reason), side by side."""
    parts = [literal(x["prompt"], "bold")]
    current = x["initial"]
    for p in x["passes"]:
        row = Table.grid(expand=True, padding=(0, 1))
        for _ in range(3):
            row.add_column(ratio=1)
        status = (
            join(("kept", "green")) if p["kept"] else join(("dropped: ", "yellow"), (p["dropped"], "yellow"))
        )
        row.add_row(
            Panel(literal(current or "(empty)"), title="initial response" if p["pass"] == 1 else "response"),
            Panel(
                join(("principle: ", "bold"), (p["principle"], "bold"), "\n", p["critique"] or "(empty)"),
                title="critique",
                style="dim",
            ),
            Panel(join(status, "\n", p["revision"] or "(empty)"), title=join("revision ", p["pass"])),
        )
        parts.append(row)
        if p["kept"]:
            current = p["revision"]
    final = (
        Text("final: the last kept revision", style="green")
        if x["final"] is not None
        else Text("no revision kept", style="yellow")
    )
    parts.append(final)
    return Panel(Group(*parts), title=join("round ", x["round"], " · prompt ", x["prompt_id"]))


def first_loss(loss: str, beta: float) -> str:
    """The loss at policy = reference (the first step) of each preference loss, as the legend states it."""
    if loss == "ipo":
        return f"1/(4 beta^2) = {1 / (4 * beta * beta):.4g}"
    if loss == "hinge":
        return "1"
    return "ln 2 = 0.693"


def loss_legend(dpo: dict) -> str:
    """What the rounds table's loss column is, for the run's dpo config: the preference loss, with the NLL term
    where it is on; where it starts at policy = reference; and with the initial model as every round's
    reference, that only round 1 starts there."""
    loss = dpo.get("loss", "sigmoid")
    nll = dpo.get("nll_weight", 0) or any(w for w in (dpo.get("nll_weights") or {}).values())
    text = f"loss: the {loss} loss" + (" plus the NLL term (dpo.nll_weight)" if nll else "")
    first = first_loss(loss, dpo.get("beta", 0.1))
    text += f" at the first -> last step; at policy = reference the {loss} loss is {first}"
    if dpo.get("reference") == "initial":
        text += (
            ' (with dpo.reference = "initial" only round 1 starts there; later rounds start from the previous'
            " round)"
        )
    elif not nll:
        text += " (every round's first step)"
    return text


def _inside(path: str, run_dir: Path) -> str:
    """A model path as the user reads it: relative to the run folder when it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        return path


def models_table(run_dir: Path, metrics: list[dict]) -> Table:
    table = Table(title="models", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("round", justify="right")
    # whole paths, one per line: never cut or folded mid-name (a terminal too narrow wraps the line itself)
    table.add_column("model", no_wrap=True, overflow="ignore")
    table.add_column("parent", no_wrap=True, overflow="ignore")
    for m in metrics:
        table.add_row(
            str(m["round"]),
            literal(_inside(m["model"]["path"], run_dir)),
            literal(_inside(m["model"]["parent"], run_dir)),
        )
    return table


def judged_pair(j: dict) -> Panel:
    """One judgement: both responses side by side, the principle, both orders' probabilities."""
    chosen, rejected = ("chosen", "green"), ("rejected", "red")
    if j["kept"]:
        x_title = join("x  ", chosen if j["winner"] == "x" else rejected)
        y_title = join("y  ", chosen if j["winner"] == "y" else rejected)
        status = join(("kept", "green"), f", P(x better) = {j['p_x']:.2f}")
    else:
        x_title, y_title = Text("x"), Text("y")
        status = join(
            ("dropped (", "yellow"),
            (j["reason"], "yellow"),
            (")", "yellow"),
            f", P(x better) = {j['p_x']:.2f}",
        )
    mode = j.get("mode", "logprob")
    if mode == "pointwise":
        orders = f"pointwise: P(Yes | x) = {j['score_x']:.2f}   P(Yes | y) = {j['score_y']:.2f}"
    elif mode == "reward":  # each response's reward (log-odds for a principle the prompted judge scored)
        orders = (
            f"reward: r(x) = {_logit(j['score_x']):+.2f}   r(y) = {_logit(j['score_y']):+.2f}   "
            f"judged by {j.get('judged_by') or j.get('judge', '?')}"
        )
    else:
        orders = (
            f"order (x, y): P(first) = {j['p_first_xy']:.2f}   order (y, x): P(first) = {j['p_first_yx']:.2f}   "
            f"bias removed: {j['bias']:+.2f} log-odds"
        )
    if j.get("ranking"):
        orders += "   ranking (sample: score): " + ", ".join(
            f"{r['sample']}: {r['score']:+.2f}" for r in sorted(j["ranking"], key=lambda r: -r["score"])
        )
    for title, guide in zip((x_title, y_title), j.get("guided") or (), strict=False):
        if guide:  # sampled under the constitution's guidance for this kind (generate.guided_samples)
            title.append(f"  guided ({guide})", style="dim")
    sides = Table.grid(expand=True, padding=(0, 1))
    sides.add_column(ratio=1)
    sides.add_column(ratio=1)
    sides.add_row(
        Panel(literal(j["x"] or "(empty)"), title=x_title), Panel(literal(j["y"] or "(empty)"), title=y_title)
    )
    parts = [literal(j["prompt"], "bold"), sides, status, literal(orders, "dim")]
    for name, texts in (
        ("rationale, x shown first", j.get("rationale_xy")),
        ("rationale, y shown first", j.get("rationale_yx")),
    ):
        for t in texts or ():
            parts.append(Panel(literal(t or "(empty)"), title=Text(name), style="dim"))
    body = Group(*parts)
    return Panel(
        body,
        title=join(
            "round ", j["round"], " · principle ", (j["principle"], "bold"), " · prompt ", j["prompt_id"]
        ),
    )


def _logit(p: float) -> float:

    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def verdicts_table(metrics: list[dict]) -> Table:
    """Per round, which principle kinds judged the pairs and which models gave the verdicts: a constitution
    steers the rounds only where these move with its weights."""
    t = Table(
        title="verdicts by principle kind and model", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False
    )
    guided = any("guided" in (m.get("judge") or {}) for m in metrics)
    for col in ("round", "principle kinds", "models", *(["guided won"] if guided else [])):
        t.add_column(col, justify="right" if col == "round" else "left")
    for m in metrics:
        j = m.get("judge") or {}
        kinds, models = j.get("by_kind") or {}, j.get("by_model") or {}
        if not kinds and not models:
            continue

        def shares(counts):
            total = sum(counts.values()) or 1
            # one entry a line: a narrow terminal never parts a model's name from its share
            return (
                Text("\n".join(f"{name} {n / total:.0%}" for name, n in counts.items()))
                if counts
                else Text("-")
            )

        won = [f"{kind} {g['won']}/{g['won'] + g['lost']}" for kind, g in (j.get("guided") or {}).items()]
        t.add_row(
            str(m["round"]),
            shares(kinds),
            shares(models),
            *([Text("\n".join(won)) if won else "-"] if guided else []),
        )
    t.caption = "share of verdicts (an ensemble's members each count); models only in reward mode" + (
        "; guided won: kept verdicts a guided response (generate.guided_samples) won against a plain one"
        if guided
        else ""
    )
    return t


def review_table(run_dir: Path, rounds: list[int]) -> Table | None:
    """Per round and principle, how often the judge agreed with the people who reviewed its verdicts
    (`rlaif review`), with the 95% interval; None when nobody reviewed any round."""
    rows = []
    for k in rounds:
        labels = list(load_labels(round_dir(run_dir, k)).values())
        if not labels:
            continue
        rows.append((k, "all", agreement(labels)))
        rows += [(k, p, a) for p, a in agreement_by_principle(labels).items()]
    if not rows:
        return None
    t = Table(title="the judge against people's labels", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for col in ("round", "principle", "reviewed", "flipped", "ties", "judge agrees", "95% CI"):
        t.add_column(col, justify="left" if col == "principle" else "right")
    for k, p, a in rows:
        lo, hi = a["ci95"]
        t.add_row(
            str(k),
            literal(p, "bold" if p == "all" else ""),
            str(a["reviewed"]),
            str(a["flips"]),
            str(a["ties"]),
            fmt(a["agreement"], ".0%"),
            f"{lo:.0%}-{hi:.0%}" if a["compared"] else "-",
        )
    t.caption = (
        "agrees: the reviewer kept the judge's verdict; flipped: chose the other response; ties do not count"
    )
    return t


def run_report(run_dir: str | Path, examples: int = 3):
    """The run's table, one row per completed round, then a few judged pairs of the last round."""
    run_dir = Path(run_dir)
    rounds = completed_rounds(run_dir)
    if not rounds:
        return join((f"{run_dir}: no completed rounds yet (run: rlaif run {run_dir})", "yellow"))
    metrics = [new_stage_names(read_json(round_dir(run_dir, k) / "metrics.json")) for k in rounds]
    manifest = read_json(run_dir / "manifest.json") or {}
    dpo = new_names(manifest.get("config", {})).get("dpo", {})
    legend = Text(
        "resp: responses sampled; tokens: mean per response; consistent: share of pairs whose two judge orders pick "
        "the same winner, raw / after removing the position bias (- in pointwise mode: each response is scored "
        f"alone, there are no orders); {loss_legend(dpo)}; acc: reward accuracy; time: seconds "
        "per stage (generate/judge/dpo).",
        style="dim",
    )
    parts = []
    if any(s in m for m in metrics for s in ("generate", "judge", "dpo")):
        parts += [rounds_table(run_dir, metrics), legend]
    if any((m.get("judge") or {}).get("by_kind") for m in metrics):
        parts.append(verdicts_table(metrics))
    if any("rl" in m for m in metrics):
        parts.append(rl_table(metrics))
    if any(m.get("discriminator", {}).get("mode") == "adversarial" for m in metrics):
        parts.append(rlhb_table(metrics))
    if any("critique" in m or "sft" in m for m in metrics):
        parts.append(critique_table(metrics))
    parts.append(models_table(run_dir, metrics))
    dp_rows = ledger_summary(run_dir)
    if dp_rows:
        parts.append(privacy_table(dp_rows))
    reviewed = review_table(run_dir, preference_rounds(run_dir))
    if reviewed is not None:
        parts.append(reviewed)
    evaluation = read_json(run_dir / "eval.json")
    if evaluation:  # written by `rlaif eval`: one row per evaluated round, with trends
        parts.append(eval_table(evaluation))
        if (run_dir / "eval.png").is_file():
            parts.append(join(("chart: ", "dim"), (run_dir / "eval.png", "dim")))
    path = round_dir(run_dir, rounds[-1]) / "judgements.jsonl"
    judgements = read_jsonl(path) if path.is_file() else []  # a round without a judge stage (rl) has none
    kept = [j for j in judgements if j["kept"]]
    dropped = [j for j in judgements if not j["kept"]]
    # show mostly kept pairs (what training saw) and one dropped one, so the drop reasons are visible too
    shown = kept[: max(0, examples - 1)] + dropped[:1] if examples else []
    shown += kept[len(shown) - len(dropped[:1]) :][: examples - len(shown)]  # no dropped one: another kept
    for j in shown[:examples]:
        parts.append(judged_pair(j))
    return Group(*parts)


def judged_under(record: dict, principle: str) -> bool:
    """Whether a judged pair was judged under `principle`: a principle id (a member of an ensemble too) or a
    principle kind."""
    return principle in str(record.get("principle")).split("+") or principle in (record.get("kinds") or ())


def require_principle(records: list[dict], principle: str, where: str) -> None:
    """A `--principle` filter no record matches is an error listing the principles and kinds there are."""
    if any(judged_under(j, principle) for j in records):
        return
    ids = sorted({q for j in records for q in str(j.get("principle")).split("+")})
    kinds = sorted({q for j in records for q in j.get("kinds") or () if q})
    raise DataError(
        f"--principle {principle!r}: {where} has it (principles: {', '.join(ids)}"
        + (f"; kinds: {', '.join(kinds)})" if kinds else ")")
    )


def filter_judgements(
    records: list[dict],
    principle: str | None = None,
    kept: bool | None = None,
    inconsistent: bool = False,
    min_p: float | None = None,
    max_p: float | None = None,
    search: str | None = None,
) -> list[dict]:
    """Judged pairs matching every given filter (pure). `principle` is a principle id, matching a member of
    an ensemble too, or a principle kind ("harmlessness": every pair judged under a harmlessness principle);
    min_p/max_p bound the confidence max(P(x), 1 - P(x)); `search` is a case-insensitive substring of the
    prompt or either response; `inconsistent` keeps pairs whose two orders disagreed (raw)."""
    out = []
    for j in records:
        if principle and not judged_under(j, principle):
            continue
        if kept is not None and j["kept"] != kept:
            continue
        if inconsistent and j.get("consistent", True):
            continue
        conf = max(j["p_x"], 1 - j["p_x"])
        if (min_p is not None and conf < min_p) or (max_p is not None and conf > max_p):
            continue
        if search and not any(search.lower() in str(j.get(k, "")).lower() for k in ("prompt", "x", "y")):
            continue
        out.append(j)
    return out
