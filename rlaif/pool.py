"""The model pool: the models and the vLLM engine a run's stages share, loaded once and handed out by path.

It sits above the loaders (rlaif/models.py) and the vLLM backend, which never import it.
"""

from __future__ import annotations

from collections.abc import Callable

from rlaif.config import VLLMConfig
from rlaif.generate.vllm_backend import EngineGroup, VLLMEngine
from rlaif.models import load_model, load_tokenizer, pick_dtype
from rlaif.sharding import sharded_training


class ModelPool:
    """The models a run's stages share, loaded once and handed out by path.

    - `model(path)` lends a transformers model (and its tokenizer), loading it if needed; at most `capacity`
      stay loaded, the least recently used going first.
    - `engine(path)` lends a vLLM engine (one at a time: asking for another model's engine closes the old one).
    - `take(path)` hands a model over for good, to a stage that changes its weights (training): it leaves the
      pool, and engines are closed first so that training has the device's memory.
    - `put(path, model, tokenizer)` gives the pool a model under the path its weights now belong to.
    - `release(path)` / `close()` free one model / everything.

    Stages never free each other's models: they ask the pool, which decides what stays."""

    def __init__(
        self,
        model_config,
        device: str,
        vllm_config=None,
        seed: int = 0,
        notify: Callable[[str], None] = lambda _m: None,
        capacity: int = 2,
    ):
        self.config, self.device, self.vllm_config, self.seed = model_config, device, vllm_config, seed
        self.notify, self.capacity = notify, capacity
        self._models: dict[str, tuple] = {}  # path -> (model, tokenizer), least recently used first
        self._tokenizers: dict[str, object] = {}
        self._engine = None

    def tokenizer(self, path: str):
        if path in self._models:
            return self._models[path][1]
        if path not in self._tokenizers:
            self._tokenizers[path] = load_tokenizer(path, self.config.trust_remote_code)
        return self._tokenizers[path]

    def model(self, path: str):
        if path in self._models:
            self._models[path] = self._models.pop(path)  # most recently used now
            return self._models[path]
        while len(self._models) >= self.capacity:
            self._models.pop(next(iter(self._models)))
        self.notify(f"loading {path}")
        tok = self.tokenizer(path)
        model = load_model(path, self.device, self.config.dtype, self.config.trust_remote_code)
        self._models[path] = (model, tok)
        return self._models[path]

    def take(self, path: str, training: bool = False):
        """The model at `path`, no longer the pool's. `training` under launch.shard = fsdp in a process group:
        loaded on the CPU (in the device's dtype) so that no process ever holds the whole model on its GPU;
        fully_shard moves each unit's shard to the GPU as it shards it (rlaif/sharding.py)."""
        self.close_engine()
        found = self._models.pop(path, None)
        if found is not None:
            return found
        self.notify(f"loading {path}")
        tok = self.tokenizer(path)
        device, dtype = self.device, self.config.dtype
        if training and self.device != "cpu" and sharded_training():
            device, dtype = "cpu", str(pick_dtype(dtype, self.device)).removeprefix("torch.")
        return load_model(path, device, dtype, self.config.trust_remote_code), tok

    def take_if_present(self, path: str):
        return self._models.pop(path, None)

    def put(self, path: str, model, tokenizer) -> None:
        self._models.pop(path, None)
        while len(self._models) >= self.capacity:
            self._models.pop(next(iter(self._models)))
        self._models[path] = (model, tokenizer)

    def engine(self, path: str):

        if self._engine is None or self._engine.model_path != path:
            self.close_engine()
            self.notify(f"starting a vLLM engine for {path}")

            vcfg = self.vllm_config or VLLMConfig()
            engine = EngineGroup if vcfg.data_parallel_size > 1 else VLLMEngine
            self._engine = engine(path, vcfg, self.config, self.seed)
        return self._engine

    def close_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def release(self, path: str) -> None:
        self._models.pop(path, None)

    def close(self) -> None:
        self.close_engine()
        self._models.clear()
