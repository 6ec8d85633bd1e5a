"""A trained reward model as a scorer: `RewardModel` borrows its body from the model pool and applies the head
(or, for a principle-conditioned model, the heads mixed by the principle; rlaif/reward/conditioned.py)."""

from __future__ import annotations

from pathlib import Path

from rlaif.models import cache_dir, resolve_model
from rlaif.progress import SILENT, Progress
from rlaif.reward.conditioned import PrincipleReader
from rlaif.reward.features import cached_features, extract, row_key
from rlaif.reward.format import encode, load_spec, resolve_reward_model

MEMO_LIMIT = 1_000_000
"""Rewards a RewardModel keeps in memory before it starts afresh (about 100 bytes each)."""


class RewardModel:
    """Scores (conversation, response[, principle]) with a trained head over its body model, which it borrows
    from a ModelPool (so a judge and a policy on the same weights share them)."""

    def __init__(self, folder: str | Path, pool, batch_size: int = 8, cache: bool = False):
        from safetensors.torch import load_file

        self.folder = resolve_reward_model(str(folder))
        self.spec = load_spec(self.folder)
        self.base = resolve_model(self.spec.base)
        self.pool, self.batch_size = pool, batch_size
        self.cache = cache
        """Keep the features of scored responses on disk ($RLAIF_CACHE/features), for `rlaif rm eval`: every
        frozen head on the same body reads the same features of a labelled set."""
        self.head = load_file(str(self.folder / "head.safetensors"))
        self.weight, self.bias = self.head["weight"], self.head["bias"]
        self._model = None
        self._reader = None
        self._memo: dict[tuple, float] = {}
        """Rewards already computed, by (row key, principle text): the body and head are fixed for this object's
        life, so a response scored again (`rlaif eval` scores round 0's answers against every round, and the
        harmful ones again for acceptance) costs no forward pass."""

    @property
    def model(self):
        if self._model is None:
            model, _ = self.pool.model(self.base)
            if self.spec.mode == "lora":
                from peft import PeftModel

                model, _ = self.pool.take(self.base)  # adapted: no longer the pool's copy of the base
                attach_head(
                    model
                )  # the module the adapter saved its head with (head.safetensors holds it too)
                model = (
                    PeftModel.from_pretrained(model, str(self.folder / "adapter")).merge_and_unload().eval()
                )
            self._model = model
        return self._model

    @property
    def tokenizer(self):
        return self.pool.tokenizer(self.base)

    def rows(self, items) -> list[tuple[list[int], int]]:
        tok = self.tokenizer
        # the principle goes into the input (SALMON's prefix) unless the model reads it beside it
        prefix = self.spec.principle_conditioned and self.spec.mode != "conditioned"
        return [
            encode(tok, conv, resp, self.spec.max_length, principle if prefix else None)
            for conv, resp, principle in items
        ]

    def rewards(self, items: list[tuple], progress: Progress = SILENT) -> list[float]:
        """One reward per (conversation, response, principle text or None); each distinct input is computed once
        in this object's life."""
        rows = self.rows(items)
        keys = [(row_key(ids, start), text) for (ids, start), (_, _, text) in zip(rows, items, strict=True)]
        first: dict[tuple, int] = {}  # each new input's first place
        for i, k in enumerate(keys):
            if k not in self._memo:
                first.setdefault(k, i)
        todo = list(first.values())
        if todo:
            if len(self._memo) > MEMO_LIMIT:
                self._memo.clear()
            got = self._compute([items[i] for i in todo], [rows[i] for i in todo], progress)
            self._memo.update(zip([keys[i] for i in todo], got, strict=True))
        return [self._memo[k] for k in keys]

    def _compute(self, items: list[tuple], rows: list, progress: Progress) -> list[float]:
        if self.cache and self.spec.mode != "lora" and rows:
            f = cached_features(
                self.model,
                self.tokenizer,
                rows,
                cache_dir() / "features",
                self.base,
                self.batch_size,
                progress,
            )
        else:
            f = extract(self.model, self.tokenizer, rows, self.batch_size, progress)
        if not len(f):
            return []
        if self.spec.mode == "conditioned":
            if self._reader is None:
                self._reader = PrincipleReader(self.head, self.model, self.tokenizer, self.batch_size)
            return self._reader.rewards(f, [p for _, _, p in items], self.weight, self.bias)
        return (f @ self.weight.to(f.dtype) + self.bias.to(f.dtype)).tolist()


def attach_head(model) -> None:
    """A zero linear head on the model's features, as `model.reward_head` (every reward 0 at the start)."""
    import torch

    model.reward_head = torch.nn.Linear(2 * model.config.hidden_size, 1).to(next(model.parameters()).device)
    with torch.no_grad():
        model.reward_head.weight.zero_()
        model.reward_head.bias.zero_()
