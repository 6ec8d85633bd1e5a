"""KTO (Ethayarajh et al., arXiv:2402.01306): learning from unpaired feedback, as a loss of the DPO stage
(`dpo.loss = "kto"`) on the shared trainer loop.

Each example is a prompt, a completion and a label (desirable or not), TRL's unpaired format. The implicit
reward is r = log pi(y|x) - log pi_ref(y|x); the reference point z0 is the mean, over the optimizer step's
examples, of the same log-ratio on mismatched pairs, floored at 0 and without gradient: example i's prompt with
the completion of the example before it in the step (x_i, y_{i-1}), the rotation TRL's KTOTrainer uses. z0 is
computed once per step before the micro-batches (`before_step`), over every process's share (the sums and counts
are all-reduced), so two processes see exactly the z0 of one. The loss is lambda_D (1 - sigmoid(beta (r - z0)))
for a desirable completion and lambda_U (1 - sigmoid(beta (z0 - r))) for an undesirable one (rlaif/losses.py).

Where the examples come from (`dpo.kto_examples`, written by the preferences stage to train_unpaired.jsonl):

- "pairs" (default): the round's training pairs unpaired, chosen desirable, rejected undesirable;
- "responses": every judged response on its own, by its own score (pointwise P(Yes) or the reward model's
  probability): desirable at or above `dpo.kto_desirable_above`, undesirable at or below
  `dpo.kto_undesirable_below`, the rest left out;

plus unpaired records ({"prompt", "completion", "label"}) from the `data.offline` files. TR-KTO: the moving
reference of TR-DPO (`dpo.tr_dpo_tau`, `dpo.tr_dpo_alpha`) works the same.

    rlaif run runs/demo --set dpo.loss=kto --set dpo.kto_examples=responses
"""

from __future__ import annotations

from dataclasses import dataclass

from rlaif.config.dpo import DPOConfig
from rlaif.data import unpair
from rlaif.logprobs import response_logps
from rlaif.lora import MovingReference
from rlaif.progress import SILENT
from rlaif.sharding import sharded_training
from rlaif.trainer import encode_response, train

# -- the examples ----------------------------------------------------------------------------------------


def responses_as_unpaired(
    judgements: list[dict], desirable_above: float, undesirable_below: float
) -> list[dict]:
    """Each judged response once, labelled by its own score (pure): judgements of pointwise or reward mode
    carry score_x / score_y, a probability per response. Responses scored between the two thresholds are left
    out; a response judged in several pairs (ranking) keeps its first score (the same response, the same score)."""
    seen, out = set(), []
    for j in judgements:
        if "score_x" not in j or "score_y" not in j:
            continue
        samples = j.get("samples") or [None, None]
        for side, sample in (("x", samples[0]), ("y", samples[1])):
            key = (j["prompt_id"], sample if sample is not None else j[side])
            if key in seen:
                continue
            seen.add(key)
            score = j[f"score_{side}"]
            if score >= desirable_above:
                label = True
            elif score <= undesirable_below:
                label = False
            else:
                continue
            out.append(
                {
                    "prompt_id": j["prompt_id"],
                    "prompt": j["prompt"],
                    "completion": j[side],
                    "finished": j.get(f"{side}_finished", True),
                    "label": label,
                    "score": score,
                    "principle": j.get("principle"),
                    "source": "response",
                }
            )
    return out


def unpaired_examples(
    config: DPOConfig, pairs: list[dict], judgements: list[dict], offline: list[dict]
) -> list[dict]:
    """A round's KTO training set (pure): its pairs unpaired, or its judged responses by score, and the drawn
    offline unpaired records."""
    if config.kto_examples == "responses":
        own = responses_as_unpaired(judgements, config.kto_desirable_above, config.kto_undesirable_below)
    else:
        own = unpair(pairs)
    return own + offline


def kto_balance(n_desirable: int, n_undesirable: int, desirable_weight: float, undesirable_weight: float):
    """lambda_D n_D / (lambda_U n_U), and whether it lies in [1, 4/3], the range the KTO paper recommends
    (arXiv:2402.01306, ICML 2024 version; TRL's KTOTrainer checks the same range). None without both kinds."""
    if not n_desirable or not n_undesirable:
        return None, False
    ratio = desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
    return ratio, 1.0 <= ratio <= 4 / 3 + 1e-9


# -- the task on the trainer loop ----------------------------------------------------------------------------


@dataclass
class EncodedUnpaired:
    ids: list[int]
    start: int
    desirable: bool


def kl_sequence(prompt_of: EncodedUnpaired, completion_of: EncodedUnpaired, max_length: int):
    """The mismatched sequence: one example's prompt with another's completion, cut from the left to fit."""
    completion = completion_of.ids[completion_of.start :]
    prompt = prompt_of.ids[: prompt_of.start]
    room = max(0, max_length - len(completion))
    prompt = prompt[-room:] if room < len(prompt) else prompt
    return EncodedUnpaired(prompt + completion, len(prompt), completion_of.desirable)


def collate(batch: list[EncodedUnpaired], pad_id: int):
    """Right-padded ids, attention mask and the completion mask of a micro-batch."""
    import torch

    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, e in enumerate(batch):
        ids[r, : len(e.ids)] = torch.tensor(e.ids)
        attn[r, : len(e.ids)] = 1
        mask[r, e.start : len(e.ids)] = 1
    return ids, attn, mask


def completion_logps(model, batch: list[EncodedUnpaired], pad_id: int):
    """Sequence log-probs of each example's completion, (B,), in one forward."""
    device = next(model.parameters()).device
    ids, attn, mask = (t.to(device) for t in collate(batch, pad_id))
    return response_logps(model, ids, attn, mask, min(e.start for e in batch))


class KTOTask(MovingReference):
    """KTO as a trainer task: unpaired examples in, the KTO loss per example out."""

    count_key = "examples"
    diverge_keys = "dpo.learning_rate (lower), dpo.beta or dpo.max_grad_norm"
    modules_to_save = None
    stat_keys = ("kl", "desirable", "reward_desirable", "reward_undesirable", "acc")

    def __init__(self, tokenizer, config: DPOConfig, ref_model=None):
        self.tokenizer, self.config, self.ref_model = tokenizer, config, ref_model
        self.pad_id = tokenizer.pad_token_id
        self.ref = None
        self.z0 = None

    def encode(self, e: dict) -> EncodedUnpaired:
        ids, start, _ = encode_response(
            self.tokenizer, e["prompt"], e["completion"], self.config.max_length, e.get("finished", True)
        )
        return EncodedUnpaired(ids, start, bool(e["label"]))

    def rows(self, e: EncodedUnpaired) -> list[int]:
        return [len(e.ids)]

    def attach(self, model) -> None:
        pass

    def _ref_logps(self, model, batch):
        """Reference log-probs: the ref adapter (TR-KTO), the given reference model, or the adapter off."""
        import torch

        with torch.no_grad():
            if self.moving_ref:
                model.set_adapter("ref")
                try:
                    return completion_logps(model, batch, self.pad_id)
                finally:
                    model.set_adapter("default")
            if self.ref_model is not None:
                return completion_logps(self.ref_model, batch, self.pad_id)
            with model.disable_adapter():
                return completion_logps(model, batch, self.pad_id)

    def prepare(self, model, data: list[EncodedUnpaired], progress) -> None:
        """The completions' reference log-probs, once (a fixed reference)."""
        import torch

        if self.moving_ref:
            return
        self.ref = torch.zeros(len(data))
        progress.stage("reference log-probs", len(data))
        bs = self.config.batch_size
        for s in range(0, len(data), bs):
            out = self._ref_logps(model, data[s : s + bs])
            self.ref[s : s + len(out)] = out.float().cpu()
            progress.advance(len(out))

    def before_step(self, model, data, chunk: list[int], rank: int, world: int, dist) -> None:
        """z0 for the step: the mean log-ratio of the mismatched pairs (x_i, y_{i-1}) over the step's examples,
        each process computing its share, the sums and counts all-reduced."""
        import torch

        from rlaif.losses import kto_reference_point_from

        if getattr(self, "private", False):  # DP: a mean over other units would leak them into each gradient
            self.z0 = torch.zeros(())
            return
        n = len(chunk)
        mine = list(range(n))[rank::world]
        real = len(mine)
        if sharded_training():  # FSDP's gathers are collective: every process runs as many forwards (fillers
            mine += [0] * (-(-n // world) - real)  # count for nothing)
        kl = [kl_sequence(data[chunk[i]], data[chunk[i - 1]], self.config.max_length) for i in mine]
        total = torch.zeros((), dtype=torch.float64)
        bs = self.config.batch_size
        with torch.no_grad():
            for s in range(0, len(kl), bs):
                batch = kl[s : s + bs]
                pol = completion_logps(model, batch, self.pad_id)
                ref = self._ref_logps(model, batch)
                total += (pol.float() - ref.float())[: max(0, real - s)].sum().double().cpu()
        count = torch.tensor(float(real), dtype=torch.float64)
        if dist is not None:
            both = torch.stack([total, count])
            dist.all_reduce(both)
            total, count = both[0], both[1]
        self.z0 = kto_reference_point_from(total.float(), int(count.item()))

    def loss(self, model, data, idx: list[int]):
        import torch

        from rlaif.losses import kto_loss

        c = self.config
        batch = [data[i] for i in idx]
        device = next(model.parameters()).device
        ref = self._ref_logps(model, batch) if self.moving_ref else self.ref[idx].to(device)
        pol = completion_logps(model, batch, self.pad_id)
        desirable = torch.tensor([e.desirable for e in batch], device=device)
        z0 = self.z0.to(device)
        loss, reward = kto_loss(
            pol, ref, desirable, z0, c.beta, c.kto_desirable_weight, c.kto_undesirable_weight
        )
        right = torch.where(desirable, reward > c.beta * z0, reward < c.beta * z0)
        figures = {
            "kl": z0.item() * len(batch),
            "desirable": desirable.float().sum().item(),
            "reward_desirable": reward[desirable].sum().item(),
            "reward_undesirable": reward[~desirable].sum().item(),
            "acc": right.float().sum().item(),
        }
        return loss, figures

    def summary(self, log: list[dict], epochs: int) -> dict:
        last = [x for x in log if x["epoch"] == epochs - 1]
        seen = sum(x["examples"] for x in last)
        n_des = sum(x["desirable"] * x["examples"] for x in last)
        n_und = seen - n_des
        return {
            "loss": "kto",
            # over the last epoch: the share of examples on the right side of the reference point
            "reward_accuracy": sum(x["acc"] * x["examples"] for x in last) / seen,
            "reward_desirable": sum(x["reward_desirable"] * x["examples"] for x in last) / n_des
            if n_des
            else None,
            "reward_undesirable": sum(x["reward_undesirable"] * x["examples"] for x in last) / n_und
            if n_und
            else None,
            "kl_first": log[0]["kl"],
            "kl_last": log[-1]["kl"],
        }


def train_kto(
    model,
    tokenizer,
    examples: list[dict],
    config: DPOConfig,
    seed: int,
    out_dir,
    progress=None,
    ref_model=None,
    **private,
):
    """Train a LoRA adapter with KTO on unpaired `examples` ({"prompt", "completion", "label"}); returns (peft
    model, metrics, log)."""
    return train(
        model,
        KTOTask(tokenizer, config, ref_model),
        examples,
        config,
        seed,
        out_dir,
        progress or SILENT,
        **private,
    )
