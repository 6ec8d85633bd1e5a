"""The sft stage: supervised fine-tuning with LoRA on prompt/response records, on the shared trainer loop
(rlaif/trainer.py: the same step plan, checkpoints, resume and divergence stop as DPO and RL).

The loss is the negative log-likelihood of the response tokens only: the chat-templated prompt and the
padding are masked out, the EOS token is trained on when the response ended on its own. Each example's loss
is the mean over its response tokens; a step averages its examples.

It trains on, in this order:
- the round's kept revisions (revisions.jsonl from the critique stage: prompt -> final revision);
- the model's own answers to helpful prompts (helpful.jsonl, `critique.helpful_prompts`), CAI's guard
  against losing helpfulness;
- records of `sft.data` files (TRL formats: prompt/completion, or messages), `sft.data_per_round` of them
  per round (seeded; 0 = all).

Writes sft_data.jsonl (what training saw, each record with its `source`), sft_log.jsonl (one record per
optimizer step) and adapter/; the trained model goes to the pool for the merge stage.

    rlaif run runs/cai
    rlaif sft --data chats.jsonl --model smollm2-135m-instruct --out out/sft      # from a file alone
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from rlaif.config.sft import SFTConfig
from rlaif.data import SCHEMA_VERSION, load_sft, read_jsonl, write_jsonl
from rlaif.generate.hf import right_padded
from rlaif.launch import is_main
from rlaif.logprobs import head_alone, response_logits
from rlaif.privacy import stage_privacy
from rlaif.progress import SILENT
from rlaif.stages.dpo import check_lora_target
from rlaif.stages.preferences import count
from rlaif.trainer import encode_response, train

PRODUCES_MODEL = False
LOWER_ON_OOM = (
    "sft.batch_size (raise sft.grad_accum to keep the effective batch), sft.max_length or sft.lora_r"
)


@dataclass
class Encoded:
    ids: list[int]
    start: int
    """Where the response starts: tokens from here on are trained on."""


def loss_mask(batch: list[Encoded], width: int):
    """(rows, width) 1 on each row's response tokens (EOS included), 0 on its prompt and on padding."""
    import torch

    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, e in enumerate(batch):
        mask[r, e.start : len(e.ids)] = 1
    return mask


class SFTTask:
    """Supervised fine-tuning as a trainer task: prompt/completion records in, response-token NLL out."""

    count_key = "examples"
    stat_keys = ("tokens", "accuracy")
    diverge_keys = "sft.learning_rate (lower) or sft.max_grad_norm"
    modules_to_save = None

    def __init__(self, tokenizer, config: SFTConfig):
        self.tokenizer, self.config = tokenizer, config

    def encode(self, e: dict) -> Encoded:

        ids, start, _ = encode_response(
            self.tokenizer, e["prompt"], e["completion"], self.config.max_length, e.get("finished", True)
        )
        return Encoded(ids, start)

    def rows(self, e: Encoded) -> list[int]:
        return [len(e.ids)]

    def attach(self, model) -> None:
        pass

    def setup(self, model) -> None:
        pass

    def prepare(self, model, data, progress) -> None:
        pass

    def loss(self, model, data: list[Encoded], idx: list[int]):
        from rlaif.losses import picked_nll, response_nll

        batch = [data[i] for i in idx]
        device = next(model.parameters()).device
        ids, attn = right_padded([e.ids for e in batch], self.tokenizer.pad_token_id)
        mask = loss_mask(batch, ids.shape[1])
        # logits only at the response tokens (rlaif/logprobs.py), else from the first response position on
        start = min(e.start for e in batch)
        keep = ids.shape[1] - start + 1
        ids, attn, mask = ids.to(device), attn.to(device), mask.to(device)
        if head_alone(model, ids, attn, start):
            nll, count, correct = picked_nll(*response_logits(model, ids, attn, mask), ids.shape[0])
        else:
            logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=keep).logits
            keep = logits.shape[1]
            nll, count, correct = response_nll(logits, ids[:, -keep:], mask[:, -keep:])
        loss = nll / count.clamp(min=1)
        return loss, {"tokens": count.sum().item(), "accuracy": (correct / count.clamp(min=1)).sum().item()}

    def after_step(self, model, step: int) -> None:
        pass

    def finish(self, model) -> None:
        pass

    def summary(self, log: list[dict], epochs: int) -> dict:
        last_epoch = [x for x in log if x["epoch"] == epochs - 1]
        seen = sum(x["examples"] for x in last_epoch)
        return {
            # the share of response tokens the model's argmax predicts, over the last epoch
            "token_accuracy": sum(x["accuracy"] * x["examples"] for x in last_epoch) / seen,
            "token_accuracy_first": log[0]["accuracy"],
        }


def train_sft(
    model, tokenizer, examples: list[dict], config: SFTConfig, seed: int, out_dir, progress=None, **private
):
    """Train a LoRA adapter on `examples` ({"prompt", "completion", "finished"?}); returns (peft model, metrics,
    log). Under torchrun each process trains its share of every step (the shared loop's data parallelism)."""

    return train(
        model, SFTTask(tokenizer, config), examples, config, seed, out_dir, progress or SILENT, **private
    )


# -- the stage ------------------------------------------------------------------------------------------


def outputs(figures: dict) -> list[str]:
    done = ["sft_data.jsonl", "sft_log.jsonl"]
    return done + ["adapter"] if figures.get("steps") else done


def data_records(run) -> list[dict]:
    """The `sft.data` files' records, read once per run."""

    if "sft_data" not in run.cache:
        records = []
        for source in run.config.sft.data:
            run.progress.note(f"reading SFT data from {source}")
            records.extend({**x, "source": f"data:{source}"} for x in load_sft(source, run.dir))
        run.cache["sft_data"] = records
    return run.cache["sft_data"]


def validate(run) -> None:

    check_lora_target(run.initial, run.config.sft.lora_target, "sft.lora_target")
    data_records(run)  # bad data fails now, not after the critique stage


def examples(round_) -> list[dict]:
    """The round's SFT examples: kept revisions, helpful answers, then the data files' share."""

    cfg = round_.config.sft
    out = []
    path = round_.dir / "revisions.jsonl"
    if cfg.revisions and path.is_file():
        out += [
            {"prompt": x["prompt"], "completion": x["final"], "finished": True, "source": "revision"}
            for x in read_jsonl(path)
            if x["final"] is not None
        ]
    path = round_.dir / "helpful.jsonl"
    if cfg.helpful and path.is_file():
        out += [
            {
                "prompt": x["prompt"],
                "completion": x["completion"],
                "finished": x["finished"],
                "source": "helpful",
            }
            for x in read_jsonl(path)
            if x["completion"].strip()
        ]
    data = data_records(round_.run)
    if cfg.data_per_round and cfg.data_per_round < len(data):
        rng = random.Random(f"{round_.seed}:sft:{round_.k}")
        data = [data[i] for i in sorted(rng.sample(range(len(data)), cfg.data_per_round))]
    return out + data


def run(round_) -> dict:

    cfg = round_.config.sft
    data = examples(round_)
    if is_main():  # under the launcher, rank 0 alone writes
        write_jsonl(round_.dir / "sft_data.jsonl", ({"schema": SCHEMA_VERSION, **x} for x in data))
    mix = count(x["source"].split(":")[0] for x in data)
    if not data:
        round_.progress.note(
            f"round {round_.k}: no SFT examples (no kept revisions, no data); the model stays {round_.model}"
        )
        if is_main():
            write_jsonl(round_.dir / "sft_log.jsonl", [])
        return {"steps": 0, "examples": 0, "loss_first": None, "loss_last": None, "mix": mix, "seconds": 0.0}
    round_.progress.note(f"round {round_.k}: SFT on {len(data)} examples")
    # trained in place: no longer the pool's copy of round_.model
    model, tok = round_.pool.take(round_.model, training=True)
    t0 = time.perf_counter()
    trained, metrics, log = train_sft(
        model,
        tok,
        data,
        cfg,
        round_.seed * 1000 + round_.k,
        round_.dir,
        round_.progress,
        **stage_privacy(round_, "sft"),
    )
    round_.pool.put(str(round_.dir / "adapter"), trained, tok)  # for the merge stage
    if is_main():  # under the launcher, rank 0 alone writes
        write_jsonl(round_.dir / "sft_log.jsonl", ({"schema": SCHEMA_VERSION, **x} for x in log))
    return {**metrics, "mix": mix, "seconds": time.perf_counter() - t0}
