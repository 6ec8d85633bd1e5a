"""Run configuration: one dataclass per stage, loaded from TOML, overridable from the command line.

A run folder holds `config.toml`; every key has a default here, so a config only says what differs:

    rlaif run runs/demo --set train.beta=0.2 --set generate.max_new_tokens=64

Errors name the file and the dotted key (and suggest the closest key for a typo), never a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

EMBEDDED_MODEL = "smollm2-135m-instruct"


class ConfigError(ValueError):
    """A bad configuration value. `key` is dotted (`train.beta`); `file` is filled in by the loader."""

    def __init__(self, key: str, message: str, file: str | Path | None = None):
        self.key, self.message, self.file = key, message, file
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.key}: {self.message}"


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(key, message)


def _one_of(value: str, choices: tuple[str, ...], key: str) -> None:
    _check(value in choices, key, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


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
        _check(bool(self.policy.strip()), "model.policy", "must name a model")
        _one_of(self.device, ("auto", "cpu", "cuda"), "model.device")
        _one_of(self.dtype, ("auto", "float32", "bfloat16", "float16"), "model.dtype")


@dataclass
class DataConfig:
    prompts: str = "prompts.jsonl"
    """JSON Lines of {"prompt": str}; a relative path is relative to the run folder."""
    prompts_per_round: int = 0
    """How many prompts each round samples (seeded, different each round); 0 = all of them."""
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

    def __post_init__(self):
        _check(self.prompts_per_round >= 0, "data.prompts_per_round", "must be >= 0")
        _check(self.replay_share >= 0, "data.replay_share", "must be >= 0")
        _check(self.offline_share >= 0, "data.offline_share", "must be >= 0")
        _check(self.offline_min >= 0, "data.offline_min", "must be >= 0")
        _check(
            not (self.offline_share or self.offline_min) or bool(self.offline),
            "data.offline",
            "is empty, but data.offline_share/offline_min ask for offline pairs",
        )


@dataclass
class GenerateConfig:
    backend: str = "auto"
    """"transformers", "vllm", or "auto" (vLLM when CUDA and vllm are both present, else transformers)."""
    samples_per_prompt: int = 2
    """Responses sampled per prompt; they are paired (1st with 2nd, 3rd with 4th, ...) for judging."""
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    max_prompt_tokens: int = 512
    """Longer prompts are cut from the left (the start of the conversation); the count is reported."""
    batch_size: int = 32
    """Sequences decoded together (prompts x samples)."""

    def __post_init__(self):
        _one_of(self.backend, ("auto", "transformers", "vllm"), "generate.backend")
        _check(self.samples_per_prompt >= 2, "generate.samples_per_prompt", "must be >= 2 to make pairs")
        _check(
            self.temperature > 0,
            "generate.temperature",
            "must be > 0 (sampling; pairs need two different responses)",
        )
        _check(0 < self.top_p <= 1, "generate.top_p", "must be in (0, 1]")
        _check(self.max_new_tokens >= 1, "generate.max_new_tokens", "must be >= 1")
        _check(self.max_prompt_tokens >= 8, "generate.max_prompt_tokens", "must be >= 8")
        _check(self.batch_size >= 1, "generate.batch_size", "must be >= 1")


@dataclass
class JudgeConfig:
    backend: str = "auto"
    """"transformers", "vllm", "openai" (an OpenAI-compatible server, e.g. `vllm serve`), or "auto" (vLLM when
    CUDA and vllm are both present, else transformers)."""
    base_url: str = ""
    """openai backend: the server's base URL, e.g. http://127.0.0.1:8000/v1."""
    api_model: str = ""
    """openai backend: the model name the server knows; empty = the first model it lists."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai backend: the environment variable holding the API key (unset is fine for a local server)."""
    top_logprobs: int = 20
    """openai backend: top log-probs asked for; an option outside them counts as probability ~0."""
    constitution: str = "default"
    """A constitution name (constitution/<name>.toml) or a path to one."""
    mode: str = "pointwise"
    """"pointwise" (each response scored alone by P(Yes) to the principle's `check` question; no position
    bias), "logprob" (pairwise, answer-option probabilities in both orders) or "rationale" (pairwise, the
    judge reasons first and its verdict line is parsed strictly). See `rlaif judge-eval` to compare them."""
    principles_per_pair: int = 1
    """Judge each pair under this many distinct sampled principles and average them (an ensemble)."""
    pairing: str = "rank"
    """With n > 2 responses per prompt: "rank" compares every pair, ranks the responses (Bradley-Terry) and
    emits best vs worst; "disjoint" judges samples 0-1, 2-3, ... as separate pairs."""
    harden: bool = True
    """Defuse template markers and special-token strings inside responses before judging (prompt injection)."""
    rationale_tokens: int = 128
    """rationale mode: the most tokens the judge may write before its verdict line."""
    min_confidence: float = 0.55
    """Keep a pair only if the order-averaged probability of the winner is at least this."""
    require_consistent: bool = True
    """Drop pairs whose two orders pick different winners (after calibration, when on)."""
    calibrate: bool = True
    """Remove the judge's average position bias (its mean log-odds for the first slot over the round)
    before the consistency check, as in contextual calibration (arXiv:2102.09690)."""
    batch_size: int = 8
    max_length: int = 1024
    """Judge prompt tokens; longer conversations are cut from the left, responses are kept whole."""

    def __post_init__(self):
        _one_of(self.backend, ("auto", "transformers", "vllm", "openai"), "judge.backend")
        _check(
            self.backend != "openai" or bool(self.base_url),
            "judge.base_url",
            "is required when judge.backend = 'openai'",
        )
        _check(self.top_logprobs >= 2, "judge.top_logprobs", "must be >= 2")
        _one_of(self.mode, ("pointwise", "logprob", "rationale"), "judge.mode")
        _one_of(self.pairing, ("rank", "disjoint"), "judge.pairing")
        _check(self.principles_per_pair >= 1, "judge.principles_per_pair", "must be >= 1")
        _check(self.rationale_tokens >= 8, "judge.rationale_tokens", "must be >= 8")
        _check(0.5 <= self.min_confidence < 1, "judge.min_confidence", "must be in [0.5, 1)")
        _check(self.batch_size >= 1, "judge.batch_size", "must be >= 1")
        _check(self.max_length >= 64, "judge.max_length", "must be >= 64")


@dataclass
class TrainConfig:
    loss: str = "sigmoid"
    """"sigmoid" (DPO), "ipo", "robust" (label-noise-robust DPO) or "hinge" (SLiC); see rlaif/losses.py."""
    beta: float = 0.1
    """Strength of the KL anchor to the reference; larger stays closer to it."""
    label_noise: float = 0.1
    """robust loss: the assumed share of preference labels that are flipped (epsilon), in [0, 0.5)."""
    nll_weight: float = 0.0
    """Weight of a per-token NLL term on the chosen response (RPO), against chosen log-probs falling."""
    length_norm: bool = False
    """Use per-token mean log-probs instead of sums in the loss (no reward for length)."""
    reference: str = "previous"
    """"previous": the round's starting model (the previous round's merged model); "initial": the run's
    first model, for every round."""
    tr_dpo_tau: int = 0
    """TR-DPO (arXiv:2404.09656): update the reference every tau optimizer steps; 0 = a fixed reference."""
    tr_dpo_alpha: float = 0.5
    """TR-DPO: ref <- alpha * policy + (1 - alpha) * ref at each update (1 = copy the policy)."""
    bucket: bool = True
    """Group pairs of similar length into the same micro-batches (less padding)."""
    checkpoint_every: int = 20
    """Save a resumable training checkpoint every this many optimizer steps; 0 = never."""
    learning_rate: float = 5e-4
    epochs: int = 2
    batch_size: int = 4
    """Pairs per micro-batch (chosen and rejected go through the model in one forward pass)."""
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    """Linear warm-up over this share of the steps, then linear decay to zero."""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 640
    """Prompt + response tokens per sequence; prompts are cut from the left."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    """0 keeps the policy equal to the reference at step one (loss ln 2); dropout makes them differ."""
    lora_target: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def __post_init__(self):
        _one_of(self.loss, ("sigmoid", "ipo", "robust", "hinge"), "train.loss")
        _check(0 <= self.label_noise < 0.5, "train.label_noise", "must be in [0, 0.5)")
        _check(self.nll_weight >= 0, "train.nll_weight", "must be >= 0")
        _one_of(self.reference, ("previous", "initial"), "train.reference")
        _check(self.tr_dpo_tau >= 0, "train.tr_dpo_tau", "must be >= 0 (0 = off)")
        _check(0 < self.tr_dpo_alpha <= 1, "train.tr_dpo_alpha", "must be in (0, 1]")
        _check(
            self.tr_dpo_tau == 0 or self.reference == "previous",
            "train.tr_dpo_tau",
            "TR-DPO moves the round's own reference; it needs train.reference = 'previous'",
        )
        _check(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0 (0 = never)")
        _check(self.beta > 0, "train.beta", "must be > 0")
        _check(self.learning_rate > 0, "train.learning_rate", "must be > 0")
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        _check(0 <= self.warmup_ratio < 1, "train.warmup_ratio", "must be in [0, 1)")
        _check(self.max_length >= 16, "train.max_length", "must be >= 16")
        _check(self.lora_r >= 1, "train.lora_r", "must be >= 1")
        _check(0 <= self.lora_dropout < 1, "train.lora_dropout", "must be in [0, 1)")
        _check(len(self.lora_target) > 0, "train.lora_target", "must name at least one module")


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
    """GPUs to shard the model over."""
    max_model_len: int = 4096
    """Longest prompt + response in tokens; 0 = the model's own limit (more KV cache memory)."""
    enforce_eager: bool = False
    """Skip graph compilation: faster start (about 30 s instead of 1-2 minutes on CPU), slower decoding."""

    def __post_init__(self):
        _check(0 < self.gpu_memory_utilization <= 1, "vllm.gpu_memory_utilization", "must be in (0, 1]")
        _check(0 < self.cpu_memory_utilization <= 1, "vllm.cpu_memory_utilization", "must be in (0, 1]")
        _check(self.tensor_parallel_size >= 1, "vllm.tensor_parallel_size", "must be >= 1")
        _check(self.max_model_len >= 0, "vllm.max_model_len", "must be >= 0")


@dataclass
class RunConfig:
    seed: int = 0
    """Seeds principle sampling, prompt sampling, generation and training; recorded in the manifest."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    return {name: hints[name] for name in ("model", "data", "generate", "judge", "train", "vllm")}


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value, hint, key: str):
    """Check a TOML value against the field's annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        _check(isinstance(value, list), key, f"must be a list, got {value!r}")
        return [_coerce(v, item, key) for v in value]
    if hint is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
    elif hint is int:
        _check(
            isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {value!r}"
        )
    elif hint is float:
        _check(
            isinstance(value, int | float) and not isinstance(value, bool),
            key,
            f"must be a number, got {value!r}",
        )
        value = float(value)
    elif hint is str:
        _check(isinstance(value, str), key, f"must be a string, got {value!r}")
    return value


def build_config(raw: dict) -> RunConfig:
    """Turn a parsed TOML document into a RunConfig; raises ConfigError naming the dotted key."""
    sections = _section_types()
    kwargs = {}
    for key, value in raw.items():
        if key == "seed":
            kwargs["seed"] = _coerce(value, int, "seed")
            continue
        if key not in sections:
            raise ConfigError(key, "unknown section or key" + _suggest(key, [*sections, "seed"]))
        _check(isinstance(value, dict), key, "must be a table ([" + key + "])")
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
    """`train.beta=0.2` -> (["train", "beta"], 0.2). Values are read as TOML, else taken as a bare string."""
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
    return key.split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
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
    try:
        return build_config(apply_overrides(raw, list(overrides)))
    except ConfigError as e:
        e.file = path
        raise


def to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)
