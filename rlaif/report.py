"""Rich renderables for runs and principles. Builders return renderables; only cli.py prints them.

    rlaif report runs/demo
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.columns import Columns
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
    table = Table(title=f"run {run_dir}", caption="loss at the first step is ln 2 = 0.693 (policy = reference)")
    for col, justify in [
        ("round", "right"),
        ("responses", "right"),
        ("mean len", "right"),
        ("tok/s", "right"),
        ("pairs", "right"),
        ("kept", "right"),
        ("consistent\nraw / calib.", "right"),
        ("loss first -> last", "right"),
        ("reward acc", "right"),
        ("time gen / judge / train", "right"),
        ("model", "left"),
    ]:
        table.add_column(col, justify=justify)
    for m in metrics:
        g, j, t = m["generate"], m["judge"], m["train"]
        loss = "no pairs" if not t["steps"] else f"{t['loss_first']:.3f} -> {t['loss_last']:.3f}"
        tm = m["time"]
        table.add_row(
            str(m["round"]),
            str(g["responses"]),
            f"{g['mean_tokens']:.0f}",
            f"{g['tokens_per_s']:.0f}",
            str(j["pairs"]),
            str(j["kept"]),
            f"{j['position_consistency']:.0%} / {j['position_consistency_calibrated']:.0%}",
            loss,
            _fmt(t["reward_accuracy"], ".0%"),
            f"{tm['generate']:.0f}s / {tm['judge']:.0f}s / {tm['train']:.0f}s",
            _short(m["model"]["path"]),
        )
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
    body = Group(
        Text(j["prompt"], style="bold"),
        Columns([Panel(j["x"] or "(empty)", title=x_title, width=60), Panel(j["y"] or "(empty)", title=y_title, width=60)]),
        Text.from_markup(status),
        Text(orders, style="dim"),
    )
    return Panel(body, title=f"round {j['round']} · principle [bold]{j['principle']}[/] · prompt {j['prompt_id']}")


def run_report(run_dir: str | Path, examples: int = 3):
    """The run's table, one row per completed round, then a few judged pairs of the last round."""
    run_dir = Path(run_dir)
    rounds = completed_rounds(run_dir)
    if not rounds:
        return Text(f"{run_dir}: no completed rounds yet (run: rlaif run {run_dir})", style="yellow")
    metrics = [read_json(round_dir(run_dir, k) / "metrics.json") for k in rounds]
    parts = [rounds_table(run_dir, metrics)]
    judgements = read_jsonl(round_dir(run_dir, rounds[-1]) / "judgements.jsonl")
    kept = [j for j in judgements if j["kept"]]
    dropped = [j for j in judgements if not j["kept"]]
    # show mostly kept pairs (what training saw) and one dropped one, so the drop reasons are visible too
    shown = kept[: max(0, examples - 1)] + dropped[:1] if examples else []
    for j in shown[:examples]:
        parts.append(judged_pair(j))
    return Group(*parts)
