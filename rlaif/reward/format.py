"""A reward model's folder and input format: reward.json (RewardSpec) beside head.safetensors, the shipped
heads by name, and how a (conversation, response[, principle]) becomes token ids."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlaif.data import DataError, fresh_dir, replace_dir

HEADS_DIR = Path(__file__).resolve().parent.parent / "heads"


"""Reward heads shipped with the package, by name."""


@dataclass
class RewardSpec:
    base: str
    """The body: a model path, hub id, or the embedded model's name."""
    mode: str = "frozen"
    """"frozen" (a head on fixed features), "lora" (LoRA on the body, trained with the head) or
    "conditioned" (heads on fixed features mixed by the principle's text; rlaif/reward/conditioned.py)."""
    principle_conditioned: bool = False
    max_length: int = 512
    """Conversation + response tokens; the conversation is cut from the left."""
    trained_on: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    """What training reported (pairs, penalty, cross-validated accuracy, seconds)."""
    schema: int = 1


def resolve_reward_model(name: str, where: str = "") -> Path:
    """A reward model folder, or the name of a shipped one; `where` (a config key, a file and table) goes first
    in the error, so the user knows what to fix."""
    path = Path(name).expanduser()
    if (path / "reward.json").is_file():
        return path
    if "/" not in name and name not in (".", "..") and (HEADS_DIR / name / "reward.json").is_file():
        return HEADS_DIR / name
    shipped = sorted(p.parent.name for p in HEADS_DIR.glob("*/reward.json"))
    what = "no such folder" if not path.exists() else "no reward.json in it"
    raise DataError(
        f"{where + ': ' if where else ''}{name}: not a reward model ({what}); give a folder written by "
        f"`rlaif rm train` or a shipped one: {', '.join(shipped) or 'none'}"
    )


def load_spec(folder: Path) -> RewardSpec:
    try:
        raw = json.loads((Path(folder) / "reward.json").read_text())
        return RewardSpec(**raw)
    except (OSError, ValueError, TypeError) as e:
        raise DataError(f"{folder}/reward.json: damaged ({e})") from None


# -- encoding and features ------------------------------------------------------------------------------


def messages_for(conversation, principle: str | None = None) -> list[dict]:
    """A conversation (a user message, or chat messages) as the messages before the response; a principle,
    when given, goes first as a system message."""
    messages = (
        [{"role": "user", "content": conversation}] if isinstance(conversation, str) else list(conversation)
    )
    if principle:
        messages = [{"role": "system", "content": f"Judge the reply by this principle: {principle}"}] + [
            m for m in messages if m["role"] != "system"
        ]
    return messages


def encode(tokenizer, conversation, response: str, max_length: int, principle: str | None = None):
    """(token ids, response start): the chat-templated conversation, then the response and EOS. A long
    conversation loses its start; the response is kept (its end, if even it is too long)."""
    prompt_text = tokenizer.apply_chat_template(
        messages_for(conversation, principle), tokenize=False, add_generation_prompt=True
    )
    prompt = tokenizer(prompt_text, add_special_tokens=False).input_ids
    resp = (tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id])[
        -(max_length - 1) :
    ]
    room = max_length - len(resp)
    prompt = prompt[-room:] if room < len(prompt) else prompt
    return prompt + resp, len(prompt)


def save_head(folder: Path, weight, bias, spec: RewardSpec, extra: dict | None = None) -> None:
    """head.safetensors (weight, bias and any `extra` tensors) and reward.json, written to a temp folder and
    renamed into place together."""

    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = fresh_dir(folder.with_name(folder.name + ".tmp"))
    if (folder / "adapter").is_dir():
        shutil.copytree(folder / "adapter", tmp / "adapter")
    tensors = {"weight": weight.contiguous(), "bias": bias.reshape(1).contiguous()}
    tensors.update({k: v.contiguous() for k, v in (extra or {}).items()})
    save_file(tensors, str(tmp / "head.safetensors"))
    (tmp / "reward.json").write_text(json.dumps(asdict(spec), indent=2))
    mask = os.umask(0)
    os.umask(mask)
    for f in tmp.iterdir():  # safetensors writes 0600; the files follow the umask like every other output
        if f.is_file():
            f.chmod(0o666 & ~mask)
    replace_dir(tmp, folder)


def principle_text(constitution, pid: str) -> str:
    """The question(s) of a pair's principle id ("a+b" for an ensemble)."""
    by_id = {p.id: p.question for p in constitution.principles}
    return " ".join(by_id.get(x, x) for x in pid.split("+"))


def with_principle_text(pairs: list[dict], constitution, source: str = "the pairs") -> list[dict]:
    """Pairs for a principle-conditioned model: each with its principle's question (`principle_text`), read
    from its `principle` id (a run's preferences.jsonl carries one); a pair without one is an error."""
    missing = sum("principle" not in p for p in pairs)
    if missing:
        raise DataError(f"{source}: {missing} pairs carry no principle (a run's preferences.jsonl does)")
    return [{**p, "principle_text": principle_text(constitution, p["principle"])} for p in pairs]
