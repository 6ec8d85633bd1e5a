"""The LoRA recipe: LoRA on the body and the head trained together on the shared trainer loop
(rlaif/trainer.py)."""

from __future__ import annotations

import shutil
import time
import types
from pathlib import Path

from rlaif.data import clear
from rlaif.models import resolve_model
from rlaif.progress import SILENT, Progress
from rlaif.reward.features import features
from rlaif.reward.fit import informative
from rlaif.reward.format import RewardSpec, encode, save_head
from rlaif.reward.model import attach_head
from rlaif.sharding import full
from rlaif.trainer import distributed, train


class RewardTask:
    """A LoRA reward model as a trainer task: LoRA on the body and a linear head (zero at the start, so every
    reward is 0 and the first loss is ln 2) trained together on the Bradley-Terry loss of each pair."""

    count_key = "pairs"
    stat_keys = ("acc", "margin")
    diverge_keys = "--learning-rate (lower) or the margin"
    modules_to_save = ["reward_head"]

    def __init__(
        self,
        tokenizer,
        max_length: int,
        conditioned: bool = False,
        margin: float = 0.0,
        centring: float = 0.0,
    ):
        self.tokenizer, self.max_length, self.conditioned = tokenizer, max_length, conditioned
        self.margin, self.centring = margin, centring

    def encode(self, p: dict):
        principle = p.get("principle_text") if self.conditioned else None
        return (
            encode(self.tokenizer, p["prompt"], p["chosen"], self.max_length, principle),
            encode(self.tokenizer, p["prompt"], p["rejected"], self.max_length, principle),
        )

    def row_examples(self, n: int) -> list[int]:
        """The example of each row of a micro-batch's forward: chosen rows, then rejected rows."""
        return [*range(n), *range(n)]

    def rows(self, e) -> list[int]:
        return [len(e[0][0]), len(e[1][0])]

    def attach(self, model) -> None:
        attach_head(model)

    def setup(self, model) -> None:
        # the rewards of padded rows as a method of the root module, so that under launch.shard = fsdp the root's
        # parameters (embeddings, final norm, the head) are gathered for it as for a forward (rlaif/sharding.py)
        model.rlaif_forward = types.MethodType(_rewards, model)

    def prepare(self, model, data, progress) -> None:
        pass

    def loss(self, model, data, idx):
        from rlaif.losses import bradley_terry_loss

        batch = [data[i] for i in idx]
        r = model.rlaif_forward([c for c, _ in batch] + [r for _, r in batch], self.tokenizer.pad_token_id)
        rc, rr = r[: len(batch)], r[len(batch) :]
        loss = bradley_terry_loss(rc, rr, self.margin, self.centring)
        return loss, {"acc": (rc > rr).float().sum().item(), "margin": (rc - rr).detach().sum().item()}

    def after_step(self, model, step: int) -> None:
        pass

    def finish(self, model) -> None:
        pass

    def summary(self, log: list[dict], epochs: int) -> dict:
        last = [x for x in log if x["epoch"] == epochs - 1]
        seen = sum(x["pairs"] for x in last)
        return {"train_accuracy": sum(x["acc"] * x["pairs"] for x in last) / seen}


def _rewards(model, rows, pad_id: int):
    """(B,) rewards of padded rows: the head on the body's features (a method of the peft model)."""
    base = model.get_base_model()
    f = features(base, rows, pad_id)
    head = base.reward_head
    weight = head.modules_to_save["default"].weight if hasattr(head, "modules_to_save") else head.weight
    return head(f.to(weight.dtype)).squeeze(-1).float().clone()  # not a view: FSDP hooks its backward on it


def train_lora(
    pairs: list[dict],
    base: str,
    out: str | Path,
    pool,
    config,
    sources: list[str] = (),
    principle_conditioned: bool = False,
    max_length: int = 512,
    margin: float = 0.0,
    centring: float = 0.0,
    seed: int = 0,
    progress: Progress = SILENT,
) -> RewardSpec:
    """LoRA on the body and the head, on the shared trainer loop (checkpoints and resume under `out`/.train);
    writes `out` (adapter/, head.safetensors, reward.json)."""

    t0 = time.perf_counter()
    pairs, identical = informative(pairs)
    path = resolve_model(base)
    model, tok = pool.take(path, training=True)
    work = Path(out).with_name(Path(out).name + ".train")
    task = RewardTask(tok, max_length, principle_conditioned, margin, centring)
    trained, metrics, _ = train(model, task, pairs, config, seed, work, progress)
    head = trained.get_base_model().reward_head
    if hasattr(head, "modules_to_save"):  # peft's wrapper: its trained copy
        head = head.modules_to_save["default"]
    weight, bias = full(head.weight.detach()), full(head.bias.detach())  # sharded: gathered by every process
    if distributed()[1] != 0:  # one process writes the reward model
        return None
    spec = RewardSpec(
        base=base,
        mode="lora",
        principle_conditioned=principle_conditioned,
        max_length=max_length,
        trained_on=list(sources),
        figures={**metrics, "identical_dropped": identical, "seconds": time.perf_counter() - t0},
    )
    Path(out).mkdir(parents=True, exist_ok=True)
    clear(Path(out) / "adapter")
    shutil.copytree(work / "adapter", Path(out) / "adapter")
    save_head(Path(out), weight.float().reshape(-1).cpu(), bias.float().cpu(), spec)
    return spec
