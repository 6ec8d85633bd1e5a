"""`rlaif review`: a terminal app (Textual) where a person confirms or flips the judge's verdicts, pair by pair.

One screen per pair: the principle and the judge's verdict (its probability, rewards or scores, rationales),
the prompt, and the two responses side by side as the judge read them (x left, y right), each scrollable.
Every text comes from a model or a user's file and is shown literally (rlaif/untrusted.py: no markup, control
characters as visible escapes). Each label is written at once (rlaif/review/labels.py).

Keys: k keep the AI's verdict · f flip it · t tie (neither: drop the pair) · s skip · u undo · n / → next ·
p / ← previous · / search · c filter by principle · esc clear filters · ? help · q quit.
"""

from __future__ import annotations

import math

from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Header, Input, Static

from rlaif.review.exchange import xy
from rlaif.review.labels import LabelStore, agreement
from rlaif.untrusted import join, literal

KEYS = [
    ("k", "keep: the judge chose well"),
    ("f", "flip: the other response is better"),
    ("t", "tie: neither is better (the pair is dropped from training)"),
    ("s", "skip: next pair, no label"),
    ("u", "undo the last label"),
    ("n / →", "next pair"),
    ("p / ←", "previous pair"),
    ("/", "search the prompt and responses"),
    ("c", "filter by principle (empty: all)"),
    ("esc", "clear search and filter"),
    ("?", "this help"),
    ("q", "quit (every label is already saved)"),
]


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark,enter", "dismiss", "close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    #help { width: 70; height: auto; border: round $accent; background: $surface; padding: 1 2; }
    """

    def compose(self) -> ComposeResult:
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold")
        t.add_column()
        for key, what in KEYS:
            t.add_row(key, what)
        yield Static(t, id="help")


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def _fmt_p(p) -> str:
    return "-" if p is None else f"{p:.2f}"


class ReviewApp(App):
    """Review `pairs` (already in review order) of one round, writing labels through `store`."""

    TITLE = "rlaif review"
    BINDINGS = [
        Binding("k", "label('keep')", "keep"),
        Binding("f", "label('flip')", "flip"),
        Binding("t", "label('tie')", "tie"),
        Binding("s", "skip", "skip"),
        Binding("u", "undo", "undo"),
        Binding("n,right", "move(1)", "next", key_display="n"),
        Binding("p,left", "move(-1)", "prev", key_display="p"),
        Binding("slash", "ask('search')", "search", key_display="/"),
        Binding("c", "ask('principle')", "principle"),
        Binding("escape", "clear", "clear", show=False),
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("q", "quit", "quit"),
    ]
    CSS = """
    #meta { height: auto; padding: 0 1; background: $boost; }
    #prompt-box { height: auto; max-height: 7; border: round $secondary; padding: 0 1; }
    #sides { height: 1fr; }
    .side { width: 1fr; border: round $primary; padding: 0 1; }
    .side.ai { border: round $success; }
    .side.human { border: double $warning; }
    #judge { height: auto; max-height: 6; padding: 0 1; color: $text-muted; }
    #ask { display: none; }
    #ask.shown { display: block; }
    #status { height: 1; padding: 0 1; background: $panel; }
    """

    def __init__(self, pairs: list[dict], store: LabelStore, title: str = "", start: int | None = None):
        super().__init__()
        self.pairs = pairs
        self.store = store
        self.sub_title = title
        self.search = ""
        self.principle = ""
        self.asking = ""
        self.view = list(range(len(pairs)))
        if start is None:  # resume: the first pair not labelled yet
            start = next((i for i, p in enumerate(pairs) if p["pair_id"] not in store.labels), 0)
        self.pos = start
        self.message = ""

    # -- layout -----------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="meta")
        with VerticalScroll(id="prompt-box"):
            yield Static(id="prompt")
        with Horizontal(id="sides"):
            with VerticalScroll(id="left", classes="side"):
                yield Static(id="x")
            with VerticalScroll(id="right", classes="side"):
                yield Static(id="y")
        yield Static(id="judge")
        yield Input(id="ask")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_pair()

    # -- what is shown ------------------------------------------------------------------------------------

    @property
    def pair(self) -> dict | None:
        return self.pairs[self.view[self.pos]] if self.view else None

    def refresh_pair(self) -> None:
        p = self.pair
        meta, prompt = self.query_one("#meta", Static), self.query_one("#prompt", Static)
        left, right = self.query_one("#left"), self.query_one("#right")
        if p is None:
            meta.update(Text("no pair matches the search or filter (esc clears them)", style="yellow"))
            prompt.update("")
            self.query_one("#x", Static).update("")
            self.query_one("#y", Static).update("")
            self.query_one("#judge", Static).update("")
            self.update_status()
            return
        x, y, ai = xy(p)
        label = self.store.labels.get(p["pair_id"])
        human = None if label is None else {"keep": ai, "flip": "y" if ai == "x" else "x"}.get(label["label"])
        meta.update(
            join(
                (f"pair {self.pos + 1}/{len(self.view)}", "bold"),
                "  principle ",
                (p.get("principle") or "?", "bold"),
                "  round ",
                str(p.get("round", "?")),
                "  id ",
                p["pair_id"],
                "   your label: ",
                (label["label"], "bold yellow") if label else ("none", "dim"),
            )
        )
        prompt.update(literal(p["prompt"] if isinstance(p["prompt"], str) else _chat(p["prompt"])))
        for side, widget, text, name in ((left, "#x", x, "x"), (right, "#y", y, "y")):
            self.query_one(widget, Static).update(literal(text or "(empty)"))
            title = f"{name}"
            if ai == name:
                title += " · AI's choice"
            if human == name:
                title += " · yours"
            elif label and label["label"] == "tie":
                title += " · tie"
            side.border_title = title
            side.set_class(ai == name, "ai")
            side.set_class(human == name and human != ai, "human")
            side.scroll_home(animate=False)
        self.query_one("#judge", Static).update(self.judge_text(p, ai))
        self.update_status()

    def judge_text(self, p: dict, ai: str) -> Text:
        parts = [
            "judge ",
            (str(p.get("judged_by") or p.get("judge") or "?"), "bold"),
            f": P({ai} better) = {_fmt_p(p.get('p_chosen'))}",
        ]
        if p.get("mode") == "reward" and "score_x" in p:
            parts.append(f"   reward r(x) = {_logit(p['score_x']):+.2f}, r(y) = {_logit(p['score_y']):+.2f}")
        elif p.get("mode") == "pointwise" and "score_x" in p:
            parts.append(f"   P(Yes | x) = {_fmt_p(p['score_x'])}, P(Yes | y) = {_fmt_p(p['score_y'])}")
        elif p.get("p_first_xy") is not None:
            parts.append(
                f"   x first: {_fmt_p(p['p_first_xy'])}, y first: {_fmt_p(p.get('p_first_yx'))} (P(first better))"
            )
        out = join(*parts)
        for key, name in (("rationale_xy", "rationale (x first)"), ("rationale_yx", "rationale (y first)")):
            for t in p.get(key) or ():
                out.append("\n")
                out.append_text(join((f"{name}: ", "italic"), literal(t)))
        return out

    def update_status(self) -> None:
        ids = {p["pair_id"] for p in self.pairs}
        mine = [r for r in self.store.labels.values() if r["pair_id"] in ids]
        a = agreement(mine)
        if a["compared"]:
            lo, hi = a["ci95"]
            agree = f"judge agrees with you {a['agree']}/{a['compared']} ({a['agreement']:.0%}, 95% CI {lo:.0%}-{hi:.0%})"
        else:
            agree = "judge agreement: no labels yet"
        filters = []
        if self.principle:
            filters.append(f"principle={self.principle}")
        if self.search:
            filters.append(f"search={self.search!r}")
        status = join(
            (f"reviewed {a['reviewed']}/{len(self.pairs)}", "bold"),
            f"  ·  {agree}",
            f"  ·  ties {a['ties']}",
            f"  ·  {', '.join(filters)}" if filters else "",
            (f"  ·  {self.message}", "yellow") if self.message else "",
        )
        self.query_one("#status", Static).update(status)

    # -- actions ------------------------------------------------------------------------------------------

    def action_label(self, label: str) -> None:
        p = self.pair
        if p is None:
            return
        self.store.set(p, label)
        self.message = f"{label}: saved"
        self.advance()

    def action_skip(self) -> None:
        self.message = "skipped"
        self.advance()

    def advance(self) -> None:
        if self.pos + 1 < len(self.view):
            self.pos += 1
        else:
            self.message += " · last pair of the view"
        self.refresh_pair()

    def action_move(self, step: int) -> None:
        if self.view:
            self.pos = max(0, min(len(self.view) - 1, self.pos + step))
        self.message = ""
        self.refresh_pair()

    def action_undo(self) -> None:
        pid = self.store.undo()
        if pid is None:
            self.message = "nothing to undo"
        else:
            self.message = f"undone: {pid}"
            where = next((i for i, v in enumerate(self.view) if self.pairs[v]["pair_id"] == pid), None)
            if where is not None:
                self.pos = where
        self.refresh_pair()

    def action_ask(self, what: str) -> None:
        ask = self.query_one("#ask", Input)
        self.asking = what
        ask.placeholder = (
            "search text (enter to apply, empty to clear)"
            if what == "search"
            else f"principle id (enter to apply, empty for all): {', '.join(self.principles())}"
        )
        ask.value = self.search if what == "search" else self.principle
        ask.add_class("shown")
        ask.focus()

    def principles(self) -> list[str]:
        return sorted({q for p in self.pairs for q in str(p.get("principle") or "?").split("+")})

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        if self.asking == "search":
            self.search = value
        else:
            if value and value not in self.principles():
                self.message = f"no principle {value!r}"
                value = self.principle
            self.principle = value
        self.close_ask()
        self.apply_filters()

    def close_ask(self) -> None:
        ask = self.query_one("#ask", Input)
        ask.remove_class("shown")
        self.asking = ""
        self.set_focus(None)

    def action_clear(self) -> None:
        if self.asking:
            self.close_ask()
            return
        self.search = self.principle = ""
        self.apply_filters()

    def apply_filters(self) -> None:
        current = self.pair["pair_id"] if self.pair else None
        needle = self.search.lower()
        self.view = [
            i
            for i, p in enumerate(self.pairs)
            if (not self.principle or self.principle in str(p.get("principle") or "?").split("+"))
            and (
                not needle
                or any(needle in str(p.get(k, "")).lower() for k in ("prompt", "chosen", "rejected"))
            )
        ]
        ids = [self.pairs[i]["pair_id"] for i in self.view]
        self.pos = ids.index(current) if current in ids else 0
        self.refresh_pair()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        # while the search / principle box is open, letters go to it, not to the review keys
        if self.asking and action not in ("clear",):
            return False
        return True


def _chat(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
