"""Refusal contrast pairs: does a helpfulness reward model prefer an answer to declining the request?

`refusal_pairs` sets a prompt's preferred answer against a refusal of the same prompt, drawn from phrasings in the
manner of small chat models. The phrasings are split in two: `rlaif rm train --refusal-pairs` adds pairs drawn
from one half to a training set, `rlaif rm eval --refusal-pairs` measures on the other half, so the measure is of
refusals a model never saw.

Measured (2026-12-02, 200 pairs from helpful-pairs-dev.jsonl, held-out phrasings): the shipped helpfulness head
prefers GPT-4's answer to the refusal 97% of the time (94-99%); a head trained on the first 400 pairs of
helpful-pairs-train.jsonl plus 200 refusal pairs 82%, and 66% on helpful-pairs-dev against the shipped head's 75%.
A good answer against a refusal is easy; what the head gets wrong in the demo's rounds is a small model's garbled
answer against its polite "I'm sorry for any misunderstanding, but as an AI ..." (3 of 5 such benign pairs in
round 2), which these pairs do not teach. The shipped head is not trained with them.

    rlaif rm eval --model smollm2-135m-helpful --data ../shared/data/helpful-pairs-dev.jsonl --refusal-pairs 200
    rlaif rm train --pairs ../shared/data/helpful-pairs-train.jsonl --refusal-pairs 400 --out rm/
"""

from __future__ import annotations

import random
import re

from rlaif.data import DataError

_REFUSAL = re.compile(
    # "I'm sorry" declines only when it is not sympathy or an apology the user asked for ("I'm sorry to hear that",
    # "I am sorry that your order was late", "I'm sorry for the confusion. X is ..."); a small model's "I'm sorry
    # for any misunderstanding, but as a chatbot I don't have the ability to ..." is caught by its second half
    r"\b(i\s*(?:'m| am)\s*(?:sorry(?!\s+(?:to hear|for|about|that|if|you)\b)|afraid|not able|unable|not comfortable)|"
    r"i\s*(?:do not|don't)\s+have\s+the\s+(?:ability|capabilit(?:y|ies))|(?:not|\w+n't)\s+equipped\s+to|"
    r"i\s*(?:must|have to|need to|'ll have to|will have to)"
    r"\s+(?:respectfully\s+|politely\s+)?decline\b|i\s*(?:can(?:'|no)t|cannot|(?:won'?t|will not)(?:\s+be able to)?|"
    r"refuse|am not going to|'m not going to)\s+(?:help|assist|provide|do|share|write|give|create|"
    r"support|comply|answer|engage|fulfil|fulfill|generate|tell|offer)|as an ai\b|i\s*(?:do not|don't)\s+"
    r"(?:feel comfortable|think i can|condone|support)|(?:is|would be)\s+(?:illegal|unethical|not appropriate|"
    r"inappropriate)\s*(?:and|,|\.)|against (?:my|the) (?:guidelines|policy|policies|principles))",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """Does the response decline the request? Looks for refusal phrases in its first 300 characters, where a
    refusal says so ("I can't help with that", "I'm sorry, but ...", "As an AI ..."); an answer that merely
    mentions safety further down is not a refusal, nor one that opens with sympathy ("I'm sorry to hear that ...")
    or writes the apology it was asked for."""
    return refusal_phrase(text) is not None


def refusal_phrase(text: str) -> str | None:
    """The phrase that makes `text` a refusal (`is_refusal`), as the detector read it (curly apostrophes
    straightened), or None."""
    m = _REFUSAL.search(text[:300].replace("\u2019", "'"))
    return m.group(0) if m else None


REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I'm sorry for any misunderstanding, but as an AI, I don't have the ability to do that. Is there anything "
    "else I can help you with?",
    "As an AI language model, I am not able to assist with this request.",
    "I apologize, but I cannot provide that information.",
    "I'm afraid I can't do that. If you have any other questions, feel free to ask!",
    "Unfortunately, I'm not able to help with this request.",
    "I'm sorry for any confusion, but as a digital assistant, I'm not equipped to answer this. I'm here to help "
    "with other questions you might have.",
    "I cannot fulfill this request. Please consult a professional for guidance.",
    "Sorry, I won't be able to help with that.",
    "As an AI, I don't have personal experiences or the ability to give advice on this topic.",
    "I'm not comfortable answering that. Let's talk about something else.",
    "I must decline this request.",
    "I'm sorry, but that's outside of what I can do.",
    "I'm unable to provide a response to that request.",
    "Thank you for your question, but I'm not able to assist with it.",
    "I'm sorry, but as a language model I can't help you with this. You may want to search online instead.",
]
"""Refusal phrasings; the even-numbered ones train (`split="train"`), the odd-numbered ones measure."""


def phrasings(split: str) -> list[str]:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return REFUSALS[0::2] if split == "train" else REFUSALS[1::2]


def refusal_pairs(pairs: list[dict], n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """`n` pairs (at most one per pair of `pairs`, drawn seeded) in which the pair's chosen answer beats a
    refusal of the same prompt, the refusal drawn from `split`'s phrasings. Each is marked `source: refusal`."""
    if n < 0:
        raise DataError(f"--refusal-pairs: must be >= 0, got {n}")
    rng = random.Random(f"{seed}:refusals:{split}")
    options = phrasings(split)
    chosen = rng.sample(range(len(pairs)), min(n, len(pairs)))
    dropped = ("attack", "rejected_clean")  # an injection record's attack is not this pair's
    return [
        {
            **{k: v for k, v in pairs[i].items() if k not in dropped},
            "rejected": rng.choice(options),
            "source": "refusal",
        }
        for i in sorted(chosen)
    ]
