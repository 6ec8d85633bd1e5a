"""Judge prompts: filling a template, hardening untrusted text, the answer options' tokens, and strict
parsing of rationale verdicts. Pure functions (the tokenizer is an argument).

    python -c "from rlaif.judge.prompts import parse_rationale; print(parse_rationale('ok\nAnswer: B', 'Answer:', ('A', 'B')))"
"""

from __future__ import annotations

import re

from rlaif.principles import JudgeTemplate, Principle

_PLACEHOLDER = re.compile(r"\{(question|conversation|response_a|response_b|response|check)\}")
_MARKER = re.compile(r"\[[^\[\]{}\n]{1,40}\]")


def render(template: str, values: dict[str, str]) -> str:
    """Fill {placeholders} in one pass: text inside a value is never re-scanned, so a response that
    contains "{response_b}" stays literal text."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def build_messages(
    template: JudgeTemplate, principle: Principle, conversation: str, first: str, second: str = ""
):
    """Chat messages for one judge prompt, and the assistant text that precedes the answer option.
    Pairwise modes show `first` and `second`; pointwise shows `first` alone."""
    values = {
        "question": principle.question,
        "check": principle.check,
        "conversation": conversation,
        "response_a": first,
        "response_b": second,
        "response": first,
    }
    messages = [{"role": "user", "content": render(template.user, values)}]
    if template.system:
        messages.insert(0, {"role": "system", "content": template.system})
    prefix = "" if template.mode == "rationale" else template.answer_prefix
    return messages, prefix


def template_markers(template: JudgeTemplate) -> list[str]:
    """The bracketed markers a template delimits its slots with, e.g. "[End of response A]"."""
    markers = set(_MARKER.findall(template.user))
    for m in list(markers):  # "[Response A]" also guards "[Response B]", "[Response C]" ...
        if re.search(r" [A-Z]\]$", m):
            markers.update(m[:-2] + c + "]" for c in "ABCDEFGH")
    return sorted(markers, key=len, reverse=True)


def harden(text: str, markers: list[str], specials: list[str]) -> str:
    """Defuse untrusted text before it enters a judge prompt: the template's slot markers become
    parenthesised (so a response cannot end its own slot), special-token strings get a space after their
    first character (so they tokenize as plain text, not as a new chat turn). Pure; other text is unchanged."""
    for s in specials:
        if s and s in text:
            text = text.replace(s, s[0] + " " + s[1:])
    for m in markers:
        if m.lower() in text.lower():
            text = re.sub(re.escape(m), "(" + m[1:-1] + ")", text, flags=re.IGNORECASE)
    return text


def parse_rationale(text: str, answer_prefix: str, options: tuple[str, str]) -> int | None:
    """The option a rationale ends on: 0 (first) or 1 (second), or None when it does not end on exactly one.

    Strict on purpose: the last non-empty line must be the verdict ("Answer: A", optionally bold, bracketed
    or with a full stop), and no earlier verdict line may name the other option. Anything else (no verdict,
    two verdicts, a verdict mid-sentence) is None: a guessed verdict would be training data nobody judged."""
    opts = "|".join(re.escape(o.strip()) for o in options)
    verdict = re.compile(
        r"^\W{0,3}" + re.escape(answer_prefix.strip()) + r"\**\s*[\(\[]?(" + opts + r")[\)\]]?\W{0,3}$",
        re.IGNORECASE,
    )
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    last = verdict.match(lines[-1])
    if not last:
        return None
    names = [o.strip().lower() for o in options]
    picked = names.index(last.group(1).lower())
    for ln in lines[:-1]:
        m = verdict.match(ln)
        if m and names.index(m.group(1).lower()) != picked:
            return None
    return picked


def option_token_ids(tokenizer, answer_prefix: str, options: tuple[str, str]) -> tuple[int, int]:
    """The first token of each option as it follows the answer prefix (tokenizers merge across the seam,
    so the option is tokenized in context, not alone)."""
    base = tokenizer(answer_prefix, add_special_tokens=False).input_ids
    ids = []
    for opt in options:
        full = tokenizer(answer_prefix + opt, add_special_tokens=False).input_ids
        if full[: len(base)] != base or len(full) == len(base):
            raise ValueError(f"judge option {opt!r} does not tokenize as a continuation of {answer_prefix!r}")
        ids.append(full[len(base)])
    if ids[0] == ids[1]:
        raise ValueError(f"judge options {options!r} start with the same token")
    return ids[0], ids[1]
