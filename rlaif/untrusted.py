"""The one way text that rlaif did not write reaches the terminal: model output, anything read from a run
folder or a user's file, principle text, paths, error messages that quote them.

Such text is shown literally: never parsed as rich markup (`[/INST]`, `[link=...]`, `:emoji:` stay text), and
every character a terminal would act on instead of showing (C0 and C1 controls, ESC / CSI / OSC sequences,
NUL, DEL, the bidirectional overrides of "trojan source", line and paragraph separators, lone surrogates that
cannot even be encoded) is replaced by its escape, `\\x1b`, `\\u202e`, drawn in reverse video so it cannot pass
for the same characters typed by the model. Newlines and tabs are kept. The original character rides along in
the escape's style, so `recover(literal(s)) == s` for every string (a property test checks it).

`console()` builds the terminal every verb prints to: markup, emoji codes and highlighting off, so a plain
string is never interpreted either, and a last filter that makes any control character left in a rendered
segment visible (rich's own styling and cursor codes travel separately and are kept).

    python -c "from rlaif.untrusted import console, literal; console().print(literal('[/INST] \\x1b[31m'))"
"""

from __future__ import annotations

import re

from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

# Characters shown as escapes: every C0 control but newline and tab, DEL, every C1 control (U+0080-U+009F:
# U+009B is an 8-bit CSI), the bidirectional embedding / override / isolate and mark characters, the line and
# paragraph separators, the BOM, and the surrogate range (a lone surrogate comes out of JSON's "\ud800").
_SHOWN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")
_NAMED = {"\r": "\\r", "\x00": "\\0", "\x1b": "\\x1b"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text) -> str:
    """`text` (anything: str() of it) with every character a terminal would act on replaced by its escape;
    the rest, markup-like brackets included, unchanged."""
    return _SHOWN.sub(lambda m: _escape(m.group()), str(text))


def literal(text, style=""):
    """A rich Text showing `text` exactly: no markup parsed, controls as reverse-video escapes that remember
    the character they stand for (see `recover`)."""

    text = "" if text is None else str(text)
    out = Text(style=style)
    pos = 0
    for m in _SHOWN.finditer(text):
        out.append(text[pos : m.start()])
        ch = m.group()
        out.append(_escape(ch), Style(reverse=True, meta={"rlaif.char": ch}))
        pos = m.end()
    out.append(text[pos:])
    return out


def recover(text) -> str:
    """The string a `literal` Text was built from (the inverse of `literal`)."""
    plain = text.plain
    swaps = []
    for span in text.spans:
        style = span.style
        meta = getattr(style, "meta", None) or {}
        if not isinstance(style, str) and "rlaif.char" in meta:
            swaps.append((span.start, span.end, meta["rlaif.char"]))
    out, pos = [], 0
    for start, end, ch in sorted(swaps):
        out += [plain[pos:start], ch]
        pos = end
    out.append(plain[pos:])
    return "".join(out)


def join(*parts):
    """A Text from pieces, each shown literally: a `(value, style)` tuple adds a style, a Text is kept as
    built. For titles and status lines that mix rlaif's words with untrusted ones:
    `join(("round ", "dim"), k, " · principle ", (pid, "bold"))`."""

    out = Text()
    for part in parts:
        if isinstance(part, tuple):
            value, style = part
            out.append_text(literal(value, style) if not isinstance(value, Text) else value)
        elif isinstance(part, Text):
            out.append_text(part)
        else:
            out.append_text(literal(part))
    return out


def console(stderr: bool = False, **kwargs):
    """The terminal every verb prints to (see the module docstring)."""

    class LiteralConsole(Console):
        def render(self, renderable, options=None):
            for segment in super().render(renderable, options):
                if segment.control or not _SHOWN.search(segment.text):
                    yield segment
                else:
                    yield Segment(visible(segment.text), segment.style)

    return LiteralConsole(stderr=stderr, markup=False, emoji=False, highlight=False, **kwargs)
