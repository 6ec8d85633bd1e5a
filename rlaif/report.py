"""Rich renderables for runs and principles. Builders return renderables; only cli.py prints them.

rlaif report runs/demo
"""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rlaif.data import read_jsonl
from rlaif.principles import Constitution
from rlaif.rounds import completed_rounds, read_json, round_dir


def _fmt(value, spec: str = ".3f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def principles_table(constitution: Constitution) -> Table:
    total = sum(constitution.weights)
    table = Table(title=f"constitution {constitution.name!r}: {constitution.path}", show_lines=False)
    table.add_column("id", style="bold")
    table.add_column("kind")
    table.add_column("share", justify="right")
    table.add_column("judge question")
    for p, w in zip(constitution.principles, constitution.weights, strict=True):
        style = "red" if p.kind == "harmlessness" else "green"
        table.add_row(p.id, Text(p.kind, style=style), f"{w / total:.0%}", p.question)
    return table


def rounds_table(run_dir: Path, metrics: list[dict]) -> Table:
    table = Table(
        title=f"run {run_dir}",
        box=box.SIMPLE_HEAD,
        padding=(0, 0),
        pad_edge=False,
    )
    for col in ("round", "resp", "tokens", "pairs", "kept", "consistent", "loss", "acc", "time g/j/t"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col) + 1)
    for m in metrics:
        g, j, t, tm = m["generate"], m["judge"], m["train"], m["time"]
        loss = "no pairs" if not t["steps"] else f"{t['loss_first']:.3f}->{t['loss_last']:.3f}"
        table.add_row(
            str(m["round"]),
            str(g["responses"]),
            f"{g['mean_tokens']:.0f}",
            str(j["pairs"]),
            str(j["kept"]),
            f"{j['position_consistency']:.0%}/{j['position_consistency_calibrated']:.0%}",
            loss,
            _fmt(t["reward_accuracy"], ".0%"),
            f"{tm['generate']:.0f}/{tm['judge']:.0f}/{tm['train']:.0f}",
        )
    return table


def models_table(metrics: list[dict]) -> Table:
    table = Table(title="models", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("round", justify="right")
    table.add_column("model (merged)", overflow="fold")
    table.add_column("parent", overflow="fold")
    for m in metrics:
        table.add_row(str(m["round"]), m["model"]["path"], m["model"]["parent"])
    return table


def _short(path: str, width: int = 40) -> str:
    return path if len(path) <= width else "..." + path[-(width - 3) :]


def judged_pair(j: dict) -> Panel:
    """One judgement: both responses side by side, the principle, both orders' probabilities."""
    if j["kept"]:
        x_title = "x  [green]chosen[/]" if j["winner"] == "x" else "x  [red]rejected[/]"
        y_title = "y  [green]chosen[/]" if j["winner"] == "y" else "y  [red]rejected[/]"
        status = f"[green]kept[/], P(x better) = {j['p_x']:.2f}"
    else:
        x_title, y_title = "x", "y"
        status = f"[yellow]dropped ({j['reason']})[/], P(x better) = {j['p_x']:.2f}"
    orders = (
        f"order (x, y): P(first) = {j['p_first_xy']:.2f}   order (y, x): P(first) = {j['p_first_yx']:.2f}   "
        f"bias removed: {j['bias']:+.2f} log-odds"
    )
    sides = Table.grid(expand=True, padding=(0, 1))
    sides.add_column(ratio=1)
    sides.add_column(ratio=1)
    sides.add_row(Panel(j["x"] or "(empty)", title=x_title), Panel(j["y"] or "(empty)", title=y_title))
    body = Group(
        Text(j["prompt"], style="bold"),
        sides,
        Text.from_markup(status),
        Text(orders, style="dim"),
    )
    return Panel(
        body, title=f"round {j['round']} · principle [bold]{j['principle']}[/] · prompt {j['prompt_id']}"
    )


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
            Text(name, style="bold" if name == "all" else ""),
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
    parts = [table, Text(" ".join(notes), style="dim")]
    inj = result.get("injection")
    if inj:
        t = Table(title="prompt injection", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False)
        t.add_column("attack", no_wrap=True)
        for col in ("pairs", "injected wins", "95% CI", "kept wins"):
            t.add_column(col, justify="right", no_wrap=True, min_width=len(col) + 1)
        for name, a in [("all", inj)] + list(inj["by_attack"].items()):
            lo, hi = a["attack_success_ci95"]
            t.add_row(
                Text(name, style="bold" if name == "all" else ""),
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
        parts.append(Text(line, style="dim"))
    return Group(*parts)


def run_report(run_dir: str | Path, examples: int = 3):
    """The run's table, one row per completed round, then a few judged pairs of the last round."""
    run_dir = Path(run_dir)
    rounds = completed_rounds(run_dir)
    if not rounds:
        return Text(f"{run_dir}: no completed rounds yet (run: rlaif run {run_dir})", style="yellow")
    metrics = [read_json(round_dir(run_dir, k) / "metrics.json") for k in rounds]
    legend = Text(
        "resp: responses sampled; tokens: mean per response; consistent: share of pairs whose two judge orders pick "
        "the same winner, raw / after removing the position bias; loss: DPO loss at the first -> last step (the first "
        "is ln 2 = 0.693: policy = reference); acc: reward accuracy; time: seconds per stage.",
        style="dim",
    )
    parts = [rounds_table(run_dir, metrics), legend, models_table(metrics)]
    judgements = read_jsonl(round_dir(run_dir, rounds[-1]) / "judgements.jsonl")
    kept = [j for j in judgements if j["kept"]]
    dropped = [j for j in judgements if not j["kept"]]
    # show mostly kept pairs (what training saw) and one dropped one, so the drop reasons are visible too
    shown = kept[: max(0, examples - 1)] + dropped[:1] if examples else []
    for j in shown[:examples]:
        parts.append(judged_pair(j))
    return Group(*parts)
