"""Run configuration: the run's own sections (model, data, round, vllm, launch) and, beside each stage module, that
stage's dataclass (rlaif/stages/); loaded from TOML, overridable from the command line.

A run folder holds `config.toml`; every key has a default, so a config only says what differs:

    rlaif run runs/demo --set dpo.beta=0.2 --set generate.max_new_tokens=64

Errors name the file and the dotted key (and suggest the closest key for a typo), never a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from rlaif.checks import ConfigError, check, finite_numbers, one_of
from rlaif.config.critique import CritiqueConfig
from rlaif.config.dpo import DPOConfig
from rlaif.config.generate import GenerateConfig
from rlaif.config.judge import JudgeConfig
from rlaif.config.launch import LaunchConfig
from rlaif.config.merge import MergeConfig
from rlaif.config.privacy import PrivacyConfig
from rlaif.config.review import ReviewConfig
from rlaif.config.reward_model import RewardModelConfig
from rlaif.config.rl import RLConfig
from rlaif.config.rlhb import RLHBConfig
from rlaif.config.sft import SFTConfig

__all__ = [
    "ConfigError",
    "CritiqueConfig",
    "GenerateConfig",
    "JudgeConfig",
    "LaunchConfig",
    "MergeConfig",
    "PrivacyConfig",
    "ReviewConfig",
    "RewardModelConfig",
    "RLConfig",
    "RLHBConfig",
    "SFTConfig",
    "DPOConfig",
    "RunConfig",
    "load_config",
]

EMBEDDED_MODEL = "smollm2-135m-instruct"

STAGE_NAMES = (
    "generate", "critique", "judge", "preferences", "review", "reward_model", "discriminator", "dpo", "sft", "rl",
    "merge",
)  # fmt: skip
"""Every stage a round can run (the modules of rlaif/stages/)."""

RENAMED = {"train": "dpo"}
"""Old names a run config may still use, for a stage and its section: the DPO stage was called "train" (and its
section [train]) in 0.1.0; a run folder made then reads and resumes the same."""


@dataclass
class ModelConfig:
    policy: str = EMBEDDED_MODEL
    """Initial policy: a local path, a hub id, or the embedded default `smollm2-135m-instruct`."""
    judge: str = "policy"
    """Judge model: "policy" judges with the round's starting model (self-rewarding); anything else is a fixed model."""
    device: str = "auto"
    """"auto" (CUDA when present, else CPU), "cpu" or "cuda"."""
    dtype: str = "auto"
    """"auto" = bf16 on CUDA, fp32 on CPU (bf16 is emulated on CPUs without AVX-512 and hundreds of times slower)."""
    trust_remote_code: bool = False
    """Only for hub models that ship their own code; off unless you trust the model's authors."""

    def __post_init__(self):
        check(bool(self.policy.strip()), "model.policy", "must name a model")
        one_of(self.device, ("auto", "cpu", "cuda"), "model.device")
        one_of(self.dtype, ("auto", "float32", "bfloat16", "float16"), "model.dtype")


@dataclass
class DataConfig:
    prompts: str = "prompts.jsonl"
    """JSON Lines of {"prompt": str}; a relative path is relative to the run folder."""
    prompts_per_round: int = 0
    """How many prompts each round takes; 0 = all of them. The rounds walk through one seeded shuffle of the
    file, so each round gets fresh prompts until every prompt has had its turn."""
    prompts_per_kind: dict[str, int] = field(default_factory=dict)
    """Per prompt kind (the prompt file's `kind`, e.g. {harmful = 0, benign = 24}): how many prompts of that kind
    each round takes, walking that kind's own seeded shuffle (0 = all of them), so one kind can come back every
    round while another is fresh each round. Prompts of kinds not named here follow prompts_per_round."""
    replay_share: float = 0.0
    """Online/offline hybrid: each round also trains on this many earlier-round pairs per fresh pair (drawn
    at random, seeded, from the preferences of rounds 1..k-1); 0.5 = one replayed pair per two fresh ones."""
    offline: list[str] = field(default_factory=list)
    """Imported preference data: TRL-format JSONL files (prompt/chosen/rejected, strings or chat messages),
    `datasets` folders (save_to_disk) or Hugging Face dataset names. Relative paths: from the run folder."""
    offline_share: float = 0.0
    """Offline pairs per fresh pair in each round's training set (drawn at random, seeded)."""
    offline_min: int = 0
    """At least this many offline pairs per round, even when the judge kept few fresh pairs."""
    offline_split: str = "train"
    """The split read from a dataset with several."""
    human_replay: bool = True
    """Every pair a person labelled in an earlier round (`rlaif review`: kept or flipped) joins each later
    round's training set, with `label: human`."""

    def __post_init__(self):
        finite_numbers(self, "data")
        check(self.prompts_per_round >= 0, "data.prompts_per_round", "must be >= 0")
        for kind, n in self.prompts_per_kind.items():
            check(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0,
                f"data.prompts_per_kind.{kind}",
                f"must be a whole number >= 0, got {n!r}",
            )
        check(self.replay_share >= 0, "data.replay_share", "must be >= 0")
        check(self.offline_share >= 0, "data.offline_share", "must be >= 0")
        check(self.offline_min >= 0, "data.offline_min", "must be >= 0")
        check(
            not (self.offline_share or self.offline_min) or bool(self.offline),
            "data.offline",
            "is empty, but data.offline_share/offline_min ask for offline pairs",
        )


@dataclass
class VLLMConfig:
    """Engine settings for the vllm backends (generation and judging share one engine per round)."""

    gpu_memory_utilization: float = 0.85
    """On CUDA: the share of GPU memory vLLM may take (weights + KV cache). The engine runs in its own process
    and exits before training, so training gets the whole GPU back."""
    cpu_memory_utilization: float = 0.3
    """On CPU vLLM reads gpu_memory_utilization as the share of the NUMA node's memory to reserve; this
    value is passed instead, so a CPU run does not try to take 85% of the machine."""
    tensor_parallel_size: int = 1
    """GPUs each engine shards the model over (vLLM's tensor parallelism)."""
    pipeline_parallel_size: int = 1
    """Pipeline stages each engine splits the model's layers into (each stage on tensor_parallel_size GPUs)."""
    data_parallel_size: int = 1
    """Engines, each on its own tensor x pipeline GPUs, that split every request's prompts between them (e.g.
    8 GPUs: 8 x 1 for a 7B model, 4 x 2 for a model that needs two)."""
    max_model_len: int = 4096
    """Longest prompt + response in tokens; 0 = the model's own limit (more KV cache memory)."""
    enforce_eager: bool = False
    """Skip graph compilation: faster start (about 30 s instead of 1-2 minutes on CPU), slower decoding."""

    def __post_init__(self):
        finite_numbers(self, "vllm")
        check(0 < self.gpu_memory_utilization <= 1, "vllm.gpu_memory_utilization", "must be in (0, 1]")
        check(0 < self.cpu_memory_utilization <= 1, "vllm.cpu_memory_utilization", "must be in (0, 1]")
        check(self.tensor_parallel_size >= 1, "vllm.tensor_parallel_size", "must be >= 1")
        check(self.pipeline_parallel_size >= 1, "vllm.pipeline_parallel_size", "must be >= 1")
        check(self.data_parallel_size >= 1, "vllm.data_parallel_size", "must be >= 1")
        check(self.max_model_len >= 0, "vllm.max_model_len", "must be >= 0")


DEFAULT_STAGES = ["generate", "judge", "preferences", "dpo", "merge"]


TRAINING_STAGES = ("dpo", "sft", "rl")
"""Stages that train the round's LoRA adapter (round_<k>/adapter): at most one per round."""


@dataclass
class RoundConfig:
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))
    """The stages each round runs, in order (modules of rlaif/stages/). A stage that produces a model (merge)
    makes it the round's model, and the next round starts from it."""
    first_stages: list[str] = field(default_factory=list)
    """Round 1's stages instead of `stages`, when not empty: e.g. ["critique", "sft", "merge"], Constitutional
    AI's supervised phase before the DPO or RL rounds."""

    review: str = "off"
    """"pause": `rlaif run` stops after each round's preferences are built, so people can confirm or flip the
    judge's verdicts (`rlaif review`); the next `rlaif run` trains that round on the corrected pairs. The same
    as naming the "review" stage after "preferences" in `stages`."""

    def __post_init__(self):
        one_of(self.review, ("off", "pause"), "round.review")
        self.stages = [RENAMED.get(n, n) for n in self.stages]
        self.first_stages = [RENAMED.get(n, n) for n in self.first_stages]
        check(len(self.stages) > 0, "round.stages", "must name at least one stage")
        for key, names in (("round.stages", self.stages), ("round.first_stages", self.first_stages)):
            for name in names:
                one_of(name, STAGE_NAMES, key)
            check(len(set(names)) == len(names), key, "names a stage twice")
            check(
                "review" not in names
                or ("preferences" in names and names.index("preferences") < names.index("review")),
                key,
                'names "review" without "preferences" before it (people review the pairs that stage built)',
            )
            training = [n for n in names if n in TRAINING_STAGES]
            check(
                len(training) <= 1,
                key,
                f"names {' and '.join(training)}: each trains the round's adapter, so a round runs one of them "
                "(put the other in another round, e.g. with round.first_stages)",
            )

    def stages_for(self, k: int) -> list[str]:
        """The stages round k runs."""
        names = self.first_stages if k == 1 and self.first_stages else self.stages
        if self.review == "pause" and "preferences" in names and "review" not in names:
            i = names.index("preferences") + 1
            names = [*names[:i], "review", *names[i:]]
        return names

    def all_stages(self) -> list[str]:
        return list(dict.fromkeys([*self.stages_for(1), *self.stages_for(2)]))


@dataclass
class RunConfig:
    seed: int = 0
    """Seeds principle sampling, prompt sampling, generation and training; recorded in the manifest."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    round: RoundConfig = field(default_factory=RoundConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    rlhb: RLHBConfig = field(default_factory=RLHBConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    critique: CritiqueConfig = field(default_factory=CritiqueConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def __post_init__(self):
        # seeds are combined with round and batch numbers into torch and vLLM seeds, which must fit 64 bits
        check(0 <= self.seed < 2**31, "seed", f"must be an integer in [0, 2147483647], got {self.seed}")


def _section_types() -> dict[str, type]:
    """Every section of a run config: each field of RunConfig but the seed."""
    hints = typing.get_type_hints(RunConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(RunConfig) if f.name != "seed"}


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value, hint, key: str):
    """Check a TOML value against the field's annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        check(isinstance(value, list), key, f"must be a list, got {value!r}")
        return [_coerce(v, item, key) for v in value]
    if origin is dict:
        _, item = typing.get_args(hint)
        check(isinstance(value, dict), key, f"must be a table (name = value, ...), got {value!r}")
        return {k: _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
    elif hint is int:
        check(
            isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {value!r}"
        )
    elif hint is float:
        check(
            isinstance(value, int | float) and not isinstance(value, bool),
            key,
            f"must be a number, got {value!r}",
        )
        value = float(value)
    elif hint is str:
        check(isinstance(value, str), key, f"must be a string, got {value!r}")
    return value


def build_config(raw: dict) -> RunConfig:
    """Turn a parsed TOML document into a RunConfig; raises ConfigError naming the dotted key."""
    sections = _section_types()
    kwargs = {}
    for key, value in new_names(raw).items():
        if key == "seed":
            kwargs["seed"] = _coerce(value, int, "seed")
            continue
        if key not in sections:
            raise ConfigError(key, "unknown section or key" + _suggest(key, [*sections, *RENAMED, "seed"]))
        check(isinstance(value, dict), key, "must be a table ([" + key + "])")
        cls = sections[key]
        hints = typing.get_type_hints(cls)
        fields = {}
        for sub, v in value.items():
            dotted = f"{key}.{sub}"
            if sub not in hints:
                raise ConfigError(dotted, "unknown key" + _suggest(sub, hints))
            fields[sub] = _coerce(v, hints[sub], dotted)
        kwargs[key] = cls(**fields)
    return RunConfig(**kwargs)


def parse_override(text: str) -> tuple[list[str], object]:
    """`dpo.beta=0.2` -> (["dpo", "beta"], 0.2); an old section name is read as its new one (`train.beta`: the
    same). Values are read as TOML, else taken as a bare string."""
    if "=" not in text:
        raise ConfigError(text, "an override is written section.key=value")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(text, "an override is written section.key=value")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    path = key.split(".")
    return [RENAMED.get(path[0], path[0]), *path[1:]], parsed


def new_names(raw: dict) -> dict:
    """A parsed config with its old section names replaced (RENAMED: [train] is read as [dpo])."""
    for old, new in RENAMED.items():
        if old in raw:
            check(
                new not in raw, old, f"and [{new}] are one section under its old and new name: keep [{new}]"
            )
            raw = {(new if k == old else k): v for k, v in raw.items()}
    return raw


def new_stage_names(metrics: dict) -> dict:
    """A round's metrics with stages under their current names (a round finished before the DPO stage was
    renamed from "train" records it so, in its figures and its times)."""
    out = {RENAMED.get(k, k): v for k, v in metrics.items()}
    if isinstance(out.get("time"), dict):
        out["time"] = {RENAMED.get(k, k): v for k, v in out["time"].items()}
    return out


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in new_names(raw).items()}
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(".".join(path), "is not inside a table")
        node[path[-1]] = value
    return raw


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Load `config.toml` (or a run folder holding one) and apply `section.key=value` overrides."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.toml"
    if not path.is_file():
        raise ConfigError("config", "file not found", file=path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("toml", str(e), file=path) from None
    except UnicodeDecodeError:
        raise ConfigError("toml", "not UTF-8 text", file=path) from None
    overrides = list(overrides)
    try:
        return build_config(apply_overrides(raw, overrides))
    except ConfigError as e:
        e.file = _blame(e, raw, overrides, path)
        raise


def _blame(e: ConfigError, raw: dict, overrides: list[str], path: Path) -> str:
    """Where a bad value came from: the `--set` that wrote the failing key, else the file when it fails on
    its own, else the two together (an override made a key of the file invalid)."""
    for text in overrides:
        key = text.partition("=")[0].strip()
        if e.key == text or e.key == key or e.key.startswith(key + ".") or key.startswith(e.key + "."):
            return f"--set {text}"
    if not overrides:
        return str(path)
    try:
        build_config(raw)
    except ConfigError:
        return str(path)
    return f"{path} with --set {' '.join(overrides)}"


def to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)
