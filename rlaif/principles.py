"""Principles and constitutions: load, validate, sample.

A principle is one TOML file in `principles/` (id, kind, title, weight, question, description; `check` for
the pointwise judge; `critique` and `revision`, the requests of the critique stage). A constitution
(`constitution/<name>.toml`) names the principles it uses with their sampling weights, the judge prompt
templates and the critique stage's few-shot examples. Everything here is data: files are parsed as TOML,
never executed.

    rlaif principles            # table of the default constitution's principles
    rlaif principles check      # validate every file; problems name file and key; exit code 2
    rlaif principles check my/constitution.toml my/principles/   # a user's files
"""

from __future__ import annotations

import math
import random
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from rlaif.shipped import shipped

PRINCIPLES_DIR = shipped("principles")
CONSTITUTION_DIR = shipped("constitution")

KINDS = ("harmlessness", "helpfulness")
ID_RE = re.compile(r"[a-z0-9][a-z0-9-]*")  # whole ids only: use fullmatch
MODES = ("logprob", "pointwise", "rationale")
TEMPLATE_FIELDS = {
    "logprob": ("question", "conversation", "response_a", "response_b"),
    "rationale": ("question", "conversation", "response_a", "response_b"),
    "pointwise": ("check", "conversation", "response"),
}


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


class PrincipleError(ValueError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Principle:
    id: str
    kind: str
    title: str
    question: str
    weight: float = 1.0
    description: str = ""
    path: str = ""
    check: str = ""
    """A yes/no question about one reply, "Yes" meaning it follows the principle (pointwise judge mode)."""
    critique: str = ""
    """The critique request: asks the model to find where its last response breaks the principle."""
    revision: str = ""
    """The revision request: asks the model to rewrite its response to follow the principle."""


@dataclass(frozen=True)
class CritiqueExample:
    """One few-shot example of the critique stage: a prompt, a response, and one critique-revision pass."""

    prompt: str
    response: str
    critique_request: str
    critique: str
    revision_request: str
    revision: str


EXAMPLE_KEYS = ("prompt", "response", "critique_request", "critique", "revision_request", "revision")


@dataclass(frozen=True)
class JudgeTemplate:
    """A judge prompt for one mode.

    - logprob: `user` holds {question} {conversation} {response_a} {response_b}; the judge reads the next-token
      probabilities of the two `options` right after `answer_prefix` in the assistant turn.
    - pointwise: `user` holds {check} {conversation} {response}; `options` are (yes, no) read after
      `answer_prefix`, one response at a time.
    - rationale: like logprob, but the judge writes its reasoning first; its last line must be
      `answer_prefix` followed by one of the `options` (parsed strictly)."""

    system: str
    user: str
    answer_prefix: str
    options: tuple[str, str]
    path: str = ""
    mode: str = "logprob"


@dataclass(frozen=True)
class Guidance:
    """How a guided response is sampled: under a system prompt, and/or with the reply's first words given."""

    system: str = ""
    prefix: str = ""
    """The start of the assistant's reply; the model continues it, and the response is prefix + continuation."""
    sentences: int = 0
    """End the reply after this many sentences (the prefix's included): a reply that runs on is cut at the end of
    its `sentences`-th sentence and counts as finished, as if the model had stopped there; 0: as sampled."""
    share: float = 1.0
    """Of the round's prompts of this kind, the share whose guided samples are drawn under this guidance (a
    seeded draw, fresh each round); the others' are plain. Below 1, a contrast that would otherwise teach the
    opposite lesson everywhere (e.g. a refusal offered as the loser on every ordinary prompt) is offered on some."""


@dataclass(frozen=True)
class Constitution:
    name: str
    principles: tuple[Principle, ...]
    weights: tuple[float, ...]
    template: JudgeTemplate
    path: str = ""
    description: str = ""
    pointwise_template: JudgeTemplate | None = None
    rationale_template: JudgeTemplate | None = None
    examples: tuple[CritiqueExample, ...] = ()
    """Few-shot examples for the critique stage's prompts (`critique_examples`)."""
    examples_path: str = ""
    reward_models: tuple[tuple[str, str], ...] = ()
    """`[reward_models]`: (principle kind or principle id, reward model) pairs; `judge.mode = "reward"` judges
    each principle with the model named for its id, else for its kind (see `reward_model_for`)."""

    guidance: tuple[tuple[str, Guidance], ...] = ()
    """`[guidance]`: (principle kind, guidance) pairs; with `generate.guided_samples`, some of the responses to a
    prompt are sampled under the guidance of the kind that judges it (see `guidance_for`)."""

    refusal_rewards: tuple[tuple[str, float], ...] = ()
    """`[refusal_rewards]`: (principle kind or principle id, shift) pairs; in `judge.mode = "reward"`, a response
    that declines the request (`rlaif.reward.refusals.is_refusal`) has its reward under such a principle moved by
    the shift, a rule on top of the model (see `refusal_reward_for`)."""

    def refusal_reward_for(self, principle: Principle) -> float:
        """The shift to a refusal's reward under `principle`: the one named for its id, else for its kind, else 0."""
        rules = dict(self.refusal_rewards)
        return rules.get(principle.id, rules.get(principle.kind, 0.0))

    def guidance_for(self, kind: str | None) -> Guidance | None:
        """The guidance of sampling for prompts judged under `kind`, or None."""
        return dict(self.guidance).get(kind) if kind else None

    def reward_model_for(self, principle: Principle) -> str | None:
        """The reward model that judges `principle`: the one named for its id, else for its kind, else None."""
        routes = dict(self.reward_models)
        return routes.get(principle.id) or routes.get(principle.kind)

    def sample(self, rng: random.Random) -> Principle:
        return rng.choices(self.principles, weights=self.weights, k=1)[0]

    def sample_k(self, rng: random.Random, k: int, kind: str | None = None) -> tuple[Principle, ...]:
        """k distinct principles, drawn by weight without replacement (k = 1 draws like `sample`); `kind`:
        only principles of that kind, when the constitution weighs any above 0 (else every principle)."""
        pool = [(p, w) for p, w in zip(self.principles, self.weights, strict=True) if w > 0]
        if kind is not None and any(p.kind == kind for p, _ in pool):
            pool = [(p, w) for p, w in pool if p.kind == kind]
        chosen = []
        for _ in range(min(k, len(pool))):
            i = rng.choices(range(len(pool)), weights=[w for _, w in pool], k=1)[0]
            chosen.append(pool.pop(i)[0])
        return tuple(chosen)

    def template_for(self, mode: str) -> JudgeTemplate:
        return {
            "logprob": self.template,
            "pointwise": self.pointwise_template,
            "rationale": self.rationale_template,
        }[mode]

    def by_id(self, pid: str) -> Principle:
        for p in self.principles:
            if p.id == pid:
                return p
        raise KeyError(pid)


def read_toml(path: Path, problems: list[Problem]) -> dict | None:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(Problem(str(path), "file", "not found"))
    except UnicodeDecodeError:
        problems.append(Problem(str(path), "file", "not UTF-8 text"))
    except tomllib.TOMLDecodeError as e:
        problems.append(Problem(str(path), "toml", str(e)))
    return None


def _text(raw: dict, key: str, path: Path, problems: list[Problem], required: bool = True) -> str:
    value = raw.get(key)
    if value is None:
        if required:
            problems.append(Problem(str(path), key, "missing (required)"))
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        problems.append(Problem(str(path), key, f"must be a non-empty string, got {value!r:.60}"))
        return ""
    return value.strip()


def _finite_weight(value) -> bool:
    """A TOML number usable as a sampling weight: not a bool, not inf or nan, and small enough to be a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # a TOML integer past 1e308 cannot be a float
        return False


def parse_principle(path: Path, problems: list[Problem]) -> Principle | None:
    """Validate one principle file, appending every problem found (not just the first)."""
    raw = read_toml(path, problems)
    if raw is None:
        return None
    before = len(problems)
    known = {"id", "kind", "title", "question", "weight", "description", "check", "critique", "revision"}
    for key in raw:
        if key not in known:
            problems.append(Problem(str(path), key, f"unknown key (known: {', '.join(sorted(known))})"))
    pid = _text(raw, "id", path, problems)
    if pid and not ID_RE.fullmatch(pid):
        problems.append(Problem(str(path), "id", f"{pid!r} must be lowercase letters, digits and dashes"))
    if pid and pid != path.stem:
        problems.append(Problem(str(path), "id", f"{pid!r} must match the file name {path.stem!r}"))
    kind = _text(raw, "kind", path, problems)
    if kind and kind not in KINDS:
        problems.append(Problem(str(path), "kind", f"must be one of {', '.join(KINDS)}, got {kind!r}"))
    title = _text(raw, "title", path, problems)
    question = _text(raw, "question", path, problems)
    description = _text(raw, "description", path, problems, required=False)
    check = _text(raw, "check", path, problems, required=False)
    requests = {}
    for key in ("critique", "revision"):
        # optional (a run without the critique stage needs neither), but never present and empty
        requests[key] = _text(raw, key, path, problems, required=key in raw)
    weight = raw.get("weight", 1.0)
    if not _finite_weight(weight) or weight <= 0:
        problems.append(Problem(str(path), "weight", f"must be a finite number > 0, got {weight!r}"))
        weight = 1.0
    if len(problems) > before:
        return None
    return Principle(pid, kind, title, question, float(weight), description, str(path), check, **requests)


def parse_examples(path: Path, problems: list[Problem]) -> tuple[CritiqueExample, ...]:
    """The critique stage's few-shot examples: `[[example]]` tables, each with every key of EXAMPLE_KEYS."""
    raw = read_toml(path, problems)
    if raw is None:
        return ()
    for key in raw:
        if key != "example":
            problems.append(Problem(str(path), key, "unknown key (known: example)"))
    table = raw.get("example", [])
    if not isinstance(table, list) or not all(isinstance(e, dict) for e in table):
        problems.append(Problem(str(path), "example", "must be [[example]] tables"))
        return ()
    out = []
    for i, e in enumerate(table, 1):
        before = len(problems)
        for key in e:
            if key not in EXAMPLE_KEYS:
                problems.append(
                    Problem(
                        str(path), f"example[{i}].{key}", f"unknown key (known: {', '.join(EXAMPLE_KEYS)})"
                    )
                )
        values = {}
        for key in EXAMPLE_KEYS:
            value = e.get(key)
            if not isinstance(value, str) or not value.strip():
                problems.append(
                    Problem(
                        str(path), f"example[{i}].{key}", f"must be a non-empty string, got {value!r:.60}"
                    )
                )
            else:
                values[key] = value.strip()
        if len(problems) == before:
            out.append(CritiqueExample(**values))
    return tuple(out)


def parse_template(path: Path, problems: list[Problem], mode: str = "logprob") -> JudgeTemplate | None:
    raw = read_toml(path, problems)
    if raw is None:
        return None
    before = len(problems)
    declared = raw.get("mode", "logprob")
    if declared != mode:
        problems.append(Problem(str(path), "mode", f"is {declared!r}; this slot needs a {mode!r} template"))
    system = _text(raw, "system", path, problems, required=False)
    user = _text(raw, "user", path, problems)
    prefix = raw.get("answer_prefix", "")
    if not isinstance(prefix, str):
        problems.append(Problem(str(path), "answer_prefix", "must be a string"))
    for key in raw:
        if key not in {"mode", "system", "user", "answer_prefix", "options"}:
            problems.append(
                Problem(str(path), key, "unknown key (known: mode, system, user, answer_prefix, options)")
            )
    for name in TEMPLATE_FIELDS[mode]:
        if user and "{" + name + "}" not in user:
            problems.append(Problem(str(path), "user", f"must contain the placeholder {{{name}}}"))
    options = raw.get("options")
    if not (
        isinstance(options, list) and len(options) == 2 and all(isinstance(o, str) and o for o in options)
    ):
        problems.append(Problem(str(path), "options", f"must be two non-empty strings, got {options!r}"))
    elif options[0] == options[1]:
        problems.append(Problem(str(path), "options", "the two options must differ"))
    if len(problems) > before:
        return None
    return JudgeTemplate(system, user, prefix, (options[0], options[1]), str(path), mode)


def constitution_path(name_or_path: str, base: str | Path | None = None) -> Path:
    """A shipped constitution's name, or a path: relative to `base` (a run folder) where the file is there,
    else to the working directory."""
    p = Path(name_or_path)
    if base is not None and not p.is_absolute() and (Path(base) / p).is_file():
        return Path(base) / p
    if p.suffix == ".toml" or p.exists():
        return p
    return CONSTITUTION_DIR / f"{name_or_path}.toml"


def parse_constitution(path: Path, problems: list[Problem]) -> Constitution | None:
    raw = read_toml(path, problems)
    if raw is None:
        return None
    before = len(problems)
    name = _text(raw, "name", path, problems)
    description = _text(raw, "description", path, problems, required=False)
    pdir = (path.parent / raw.get("principles_dir", "../principles")).resolve()
    known = {
        "name",
        "description",
        "principles_dir",
        "template",
        "pointwise_template",
        "rationale_template",
        "critique_examples",
        "reward_models",
        "guidance",
        "refusal_rewards",
    }
    for key in raw:
        if key not in known and key != "principles":
            problems.append(
                Problem(str(path), key, f"unknown key (known: principles, {', '.join(sorted(known))})")
            )
    template = None
    tname = _text(raw, "template", path, problems)
    if tname:
        template = parse_template(path.parent / tname, problems)
    # the other modes' templates default to the shipped ones, so a user's constitution needs only `template`
    extra = {}
    for mode in ("pointwise", "rationale"):
        tname = _text(raw, f"{mode}_template", path, problems, required=False)
        tpath = path.parent / tname if tname else CONSTITUTION_DIR / "templates" / f"{mode}.toml"
        extra[mode] = parse_template(tpath, problems, mode)
    ename = _text(raw, "critique_examples", path, problems, required=False)
    epath = path.parent / ename if ename else CONSTITUTION_DIR / "templates" / "critique-examples.toml"
    examples = parse_examples(epath, problems)
    table = raw.get("principles")
    principles, weights = [], []
    if not isinstance(table, dict) or not table:
        problems.append(
            Problem(str(path), "principles", "must be a table of principle-id = weight, not empty")
        )
    else:
        for pid, weight in table.items():
            key = f"principles.{pid}"
            if not ID_RE.fullmatch(pid):  # an id is a file name in principles_dir, never a path out of it
                problems.append(
                    Problem(str(path), key, "not a principle id (lowercase letters, digits and '-')")
                )
                continue
            if not _finite_weight(weight) or weight < 0:
                problems.append(
                    Problem(str(path), key, f"weight must be a finite number >= 0, got {weight!r}")
                )
                continue
            ppath = pdir / f"{pid}.toml"
            if not ppath.is_file():
                problems.append(Problem(str(path), key, f"no principle file {ppath}"))
                continue
            principle = parse_principle(ppath, problems)
            if principle is not None:
                principles.append(principle)
                # the constitution's weight scales the principle's own default weight
                weights.append(float(weight) * principle.weight)
                if not math.isfinite(weights[-1]):
                    problems.append(
                        Problem(
                            str(path),
                            key,
                            f"weight {weight!r} times the principle's own weight {principle.weight!r} "
                            "overflows; use smaller weights (only their ratios matter)",
                        )
                    )
        if principles and all(map(math.isfinite, weights)) and not math.isfinite(sum(weights)):
            problems.append(
                Problem(
                    str(path), "principles", "the weights add up past the largest number; use smaller ones"
                )
            )
        if principles and not any(w > 0 for w in weights):
            problems.append(Problem(str(path), "principles", "at least one weight must be > 0"))
    routes = _reward_models(raw.get("reward_models", {}), path, {p.id for p in principles}, problems)
    guidance = _guidance(raw.get("guidance", {}), path, problems)
    rules = _refusal_rewards(raw.get("refusal_rewards", {}), path, {p.id for p in principles}, problems)
    if len(problems) > before:
        return None
    return Constitution(
        name,
        tuple(principles),
        tuple(weights),
        template,
        str(path),
        description,
        extra["pointwise"],
        extra["rationale"],
        examples,
        str(epath),
        routes,
        guidance,
        rules,
    )


def _guidance(table, path: Path, problems: list[Problem]) -> tuple[tuple[str, Guidance], ...]:
    """`[guidance]`: each key a principle kind, each value the system prompt that guides sampling for the
    prompts judged under that kind (`generate.guided_samples`), or a table of `system`, `prefix` (the first
    words of the reply, which the model continues), `sentences` (where the reply ends) and `share` (of the
    kind's prompts, the share that get guided samples)."""
    if not isinstance(table, dict):
        problems.append(Problem(str(path), "guidance", "must be a table of kind = system prompt"))
        return ()
    out = []
    for key, value in table.items():
        where = f"guidance.{key}"
        if key not in KINDS:
            problems.append(Problem(str(path), where, f"not a principle kind ({', '.join(KINDS)})"))
            continue
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"system", "prefix", "sentences", "share"})
            texts = [value.get(k, "") for k in ("system", "prefix")]
            sentences, share = value.get("sentences", 0), value.get("share", 1.0)
            if unknown:
                problems.append(
                    Problem(
                        str(path),
                        f"{where}.{unknown[0]}",
                        "unknown key (known: prefix, sentences, share, system)",
                    )
                )
            elif not all(isinstance(t, str) for t in texts) or not any(t.strip() for t in texts):
                problems.append(Problem(str(path), where, "needs a non-empty `system` or `prefix` string"))
            elif isinstance(sentences, bool) or not isinstance(sentences, int) or sentences < 0:
                problems.append(
                    Problem(
                        str(path), f"{where}.sentences", f"must be a whole number >= 0, got {sentences!r}"
                    )
                )
            elif isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
                problems.append(
                    Problem(str(path), f"{where}.share", f"must be a number in (0, 1], got {share!r}")
                )
            else:
                out.append((key, Guidance(texts[0].strip(), texts[1], sentences, float(share))))
        elif not isinstance(value, str) or not value.strip():
            problems.append(Problem(str(path), where, "must be a system prompt (a non-empty string)"))
        else:
            out.append((key, Guidance(value.strip())))
    return tuple(out)


def _by_kind_or_principle(table, section: str, what: str, path: Path, ids: set[str], problems: list[Problem]):
    """The (key, value, where) of a `[section]` table whose keys are principle kinds or the constitution's
    principle ids; a problem for each other key (and for a table that is not one)."""
    if not isinstance(table, dict):
        problems.append(Problem(str(path), section, f"must be a table of kind-or-principle = {what}"))
        return
    for key, value in table.items():
        where = f"{section}.{key}"
        if key not in KINDS and key not in ids:
            problems.append(
                Problem(str(path), where, f"not a principle kind ({', '.join(KINDS)}) nor a principle here")
            )
        else:
            yield key, value, where


def _refusal_rewards(
    table, path: Path, ids: set[str], problems: list[Problem]
) -> tuple[tuple[str, float], ...]:
    """`[refusal_rewards]`: each key a principle kind or one of the constitution's principle ids, each value a
    finite number added to the reward of a response that declines the request, e.g. `helpfulness = -5.0`."""
    out = []
    for key, value, where in _by_kind_or_principle(table, "refusal_rewards", "number", path, ids, problems):
        if not _finite_weight(value):
            problems.append(Problem(str(path), where, f"must be a finite number, got {value!r}"))
        else:
            out.append((key, float(value)))
    return tuple(out)


def _reward_models(table, path: Path, ids: set[str], problems: list[Problem]) -> tuple[tuple[str, str], ...]:
    """`[reward_models]`: each key a principle kind or one of the constitution's principle ids, each value a
    reward model: a shipped head's name or a folder (relative to the constitution's folder when it is there)."""
    routes = []
    for key, value, where in _by_kind_or_principle(table, "reward_models", "model", path, ids, problems):
        if not isinstance(value, str) or not value.strip():
            problems.append(Problem(str(path), where, "must be a reward model's name or folder"))
            continue
        local = path.parent / value
        routes.append((key, str(local.resolve()) if "/" in value and local.is_dir() else value))
    return tuple(routes)


def load_constitution(name_or_path: str = "default", base: str | Path | None = None) -> Constitution:
    """Load a constitution by name or path (relative to `base` first, see `constitution_path`); raises
    PrincipleError listing every problem."""
    problems: list[Problem] = []
    c = parse_constitution(constitution_path(name_or_path, base), problems)
    if problems:
        raise PrincipleError(problems)
    return c
