"""The dpo stage (called "train" in 0.1.0; run configs may still say so): DPO-family preference training with
LoRA on the round's training pairs (DPO
arXiv:2305.18290; LoRA arXiv:2106.09685), on the shared trainer loop (rlaif/trainer.py).

Losses: sigmoid (DPO), ipo, robust, hinge, optionally length-normalised and with an NLL term on the chosen
response (rlaif/losses.py). The reference is, by default, the starting model itself: the same weights with the
adapter disabled, its log-probs computed once before the first step, so training runs one model and one
forward per micro-batch (chosen and rejected rows together). With LoRA's B matrices at zero and no dropout,
the policy equals the reference at the first step (DPO's first loss is ln 2). Other references:

- `dpo.reference = "initial"`: the run's first model, borrowed from the model pool for its log-probs.
- TR-DPO (arXiv:2404.09656), `dpo.tr_dpo_tau = k`: every k steps ref <- alpha * policy + (1 - alpha) * ref.
  With LoRA both are adapters over the same frozen base, so the reference is a second adapter of rank 2r; the
  update mixes the two low-rank weight deltas exactly and truncates to rank 2r by SVD (exact when the mix
  has rank <= 2r, always so for alpha = 1). Its log-probs are then recomputed at every step.

Writes adapter/ (with the record of the training) and train_log.jsonl (one record per optimizer step); the
trained model goes back to the pool for the merge stage.

    rlaif run runs/demo --set dpo.loss=ipo --set dpo.tr_dpo_tau=4
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from rlaif.checks import ConfigError, principle_keys
from rlaif.config.dpo import DPOConfig
from rlaif.data import SCHEMA_VERSION, read_jsonl, write_jsonl
from rlaif.kto import KTOTask, kto_balance
from rlaif.launch import is_main
from rlaif.layout import portable
from rlaif.logprobs import response_logps
from rlaif.lora import MovingReference
from rlaif.privacy import stage_privacy
from rlaif.progress import SILENT
from rlaif.stages.preferences import count
from rlaif.trainer import encode_response, train

PRODUCES_MODEL = False
LOWER_ON_OOM = (
    "dpo.batch_size (raise dpo.grad_accum to keep the effective batch), dpo.max_length or dpo.lora_r"
)


# -- encoding -------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    chosen: list[int]
    chosen_start: int
    rejected: list[int]
    rejected_start: int
    weight: float = 1.0
    """The pair's loss weight (dpo.principle_weights)."""
    nll_weight: float = 0.0
    """The weight of the NLL term on its chosen response (dpo.nll_weight, dpo.nll_weights)."""
    target: float = 1.0
    """The probability that the chosen response is the better (dpo.label_smoothing, dpo.soft_labels)."""


def pair_weight(
    principle: str | None, weights: dict[str, float], kinds: dict[str, str], default: float = 1.0
) -> float:
    """A pair's weight from the principle that judged it ("a+b" for an ensemble: the members' mean): the
    weight named for the principle's id, else for its kind (`kinds`: id -> kind), else `default` (pure)."""
    if not weights or not principle:
        return default
    members = principle.split("+")
    return sum(weights.get(p, weights.get(kinds.get(p, ""), default)) for p in members) / len(members)


def pair_target(pair: dict, config: DPOConfig, kinds: dict[str, str]) -> float:
    """The probability that a pair's chosen response is the better, for the sigmoid loss (pure): the AI judge's
    p_chosen where the pair's principle (every member of an ensemble) is named in dpo.soft_labels, by id or
    kind (`kinds`: id -> kind), and no person labelled it (a reviewer's "keep" or "flip" is a verdict, not the
    judge's doubt); otherwise 1 - dpo.label_smoothing."""
    named = set(config.soft_labels)
    members = (pair.get("principle") or "").split("+")
    soft = all(m and (m in named or kinds.get(m) in named) for m in members)
    p = pair.get("p_chosen") if soft and pair.get("label", "ai") == "ai" else None
    if isinstance(p, (int, float)) and math.isfinite(p):
        return min(1.0, max(0.0, float(p)))
    return 1.0 - config.label_smoothing


def encode_pair(
    tokenizer,
    prompt,
    chosen: str,
    rejected: str,
    max_length: int,
    chosen_finished: bool = True,
    rejected_finished: bool = True,
) -> Encoded:
    """Token ids of prompt+response for both responses, and where each response starts.

    A response that ended on its own gets the EOS token, so DPO also learns where to stop; one that was cut
    by the sampling length limit does not (teaching it to stop mid-sentence would be wrong). A prompt that
    leaves no room is cut from the left; a response longer than max_length is cut at the end. `prompt` is a
    user message, or a list of chat messages (a multi-turn conversation before the response).
    """

    prompt_ids = None
    out = []
    for response, finished in ((chosen, chosen_finished), (rejected, rejected_finished)):
        ids, start, prompt_ids = encode_response(
            tokenizer, prompt, response, max_length, finished, prompt_ids
        )
        out.append((ids, start))
    return Encoded(out[0][0], out[0][1], out[1][0], out[1][1])


def collate(batch: list[Encoded], pad_id: int):
    """Rows [chosen_0..chosen_B-1, rejected_0..rejected_B-1], right-padded; mask marks response tokens.

    Right padding keeps every real token's logits identical to an unpadded forward (causal attention), so
    reference and policy log-probs computed in different batches still match exactly."""
    import torch

    rows = [(e.chosen, e.chosen_start) for e in batch] + [(e.rejected, e.rejected_start) for e in batch]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (seq, start) in enumerate(rows):
        ids[r, : len(seq)] = torch.tensor(seq)
        attn[r, : len(seq)] = 1
        loss_mask[r, start : len(seq)] = 1
    return ids, attn, loss_mask


def batch_logps(model, batch: list[Encoded], pad_id: int, device, with_counts: bool = False):
    """(chosen, rejected) sequence log-probs for a micro-batch, in one forward pass; with `with_counts` also
    the response token counts (chosen, rejected)."""
    ids, attn, mask = (t.to(device) for t in collate(batch, pad_id))
    # logits only at the response tokens: the prompt's and the padding's are never read (rlaif/logprobs.py)
    start = min(min(e.chosen_start, e.rejected_start) for e in batch)
    logps = response_logps(model, ids, attn, mask, start)
    if not with_counts:
        return logps[: len(batch)], logps[len(batch) :]
    counts = mask[:, 1:].sum(-1)
    return logps[: len(batch)], logps[len(batch) :], counts[: len(batch)], counts[len(batch) :]


# -- the task on the trainer loop -----------------------------------------------------------------------


class PreferenceTask(MovingReference):
    """DPO-family preference training as a trainer task: pairs in, the configured loss per pair out."""

    count_key = "pairs"
    diverge_keys = "dpo.learning_rate (lower), dpo.beta or dpo.max_grad_norm"
    modules_to_save = None
    stat_keys = (
        "acc",
        "margin",
        "chosen_logp",
        "rejected_logp",
        "ref_chosen_logp",
        "ref_rejected_logp",
        "nll",
    )

    def __init__(self, tokenizer, config: DPOConfig, ref_model=None, kinds: dict[str, str] | None = None):
        """`kinds`: principle id -> kind, for dpo.principle_weights named by kind."""
        self.tokenizer, self.config, self.ref_model = tokenizer, config, ref_model
        self.kinds = kinds or {}
        self.pad_id = tokenizer.pad_token_id
        self.ref_c = self.ref_r = None

    def encode(self, p: dict) -> Encoded:
        e = encode_pair(
            self.tokenizer,
            p["prompt"],
            p["chosen"],
            p["rejected"],
            self.config.max_length,
            p.get("chosen_finished", True),
            p.get("rejected_finished", True),
        )
        e.weight = pair_weight(p.get("principle"), self.config.principle_weights, self.kinds)
        e.nll_weight = pair_weight(
            p.get("principle"), self.config.nll_weights, self.kinds, self.config.nll_weight
        )
        e.target = pair_target(p, self.config, self.kinds)
        return e

    def rows(self, e: Encoded) -> list[int]:
        return [len(e.chosen), len(e.rejected)]

    def row_examples(self, n: int) -> list[int]:
        """The example of each row of a micro-batch's forward: chosen rows, then rejected rows."""
        return [*range(n), *range(n)]

    def attach(self, model) -> None:
        pass

    def _logps(self, net, batch):
        """(chosen, rejected) log-probs as the loss reads them (per-token means under length_norm), and the
        chosen sums and token counts for the NLL term."""
        device = next(net.parameters()).device
        c, r, nc, nr = batch_logps(net, batch, self.pad_id, device, with_counts=True)
        if self.config.length_norm:
            return c / nc.clamp(min=1), r / nr.clamp(min=1), c, nc
        return c, r, c, nc

    def prepare(self, model, data: list[Encoded], progress) -> None:
        """Reference log-probs, once (a fixed reference): the same network with the adapter switched off, or
        the given reference model."""
        import torch

        self.ref_c, self.ref_r = torch.zeros(len(data)), torch.zeros(len(data))
        if self.moving_ref:
            return
        progress.stage("reference log-probs", len(data))
        model.eval()
        bs = self.config.batch_size
        with torch.no_grad():  # not inference_mode: FSDP reuses its gather buffers after (rlaif/sharding.py)
            for s in range(0, len(data), bs):
                batch = data[s : s + bs]
                if self.ref_model is not None:
                    c, r, _, _ = self._logps(self.ref_model, batch)
                else:
                    with model.disable_adapter():
                        c, r, _, _ = self._logps(model, batch)
                self.ref_c[s : s + len(c)], self.ref_r[s : s + len(r)] = c.float().cpu(), r.float().cpu()
                progress.advance(len(c))

    def loss(self, model, data: list[Encoded], idx: list[int]):
        import torch

        from rlaif.losses import nll_term, preference_loss

        c = self.config
        batch = [data[i] for i in idx]
        device = next(model.parameters()).device
        if self.moving_ref:
            model.set_adapter("ref")
            with torch.no_grad():
                ref_c, ref_r, _, _ = self._logps(model, batch)
            model.set_adapter("default")
        else:
            ref_c, ref_r = self.ref_c[idx].to(device), self.ref_r[idx].to(device)
        pc, pr, pc_sum, nc = self._logps(model, batch)
        target = None
        if c.soft_labels or c.label_smoothing:
            target = torch.tensor([e.target for e in batch], dtype=pc.dtype, device=pc.device)
        loss, rc, rr = preference_loss(c.loss, pc, pr, ref_c, ref_r, c.beta, c.label_noise, target)
        nll = nll_term(pc_sum, nc)
        nll_w = [e.nll_weight for e in batch]  # dpo.nll_weights by the pair's principle, else dpo.nll_weight
        total = loss + torch.tensor(nll_w, dtype=nll.dtype, device=nll.device) * nll if any(nll_w) else loss
        if c.principle_weights:
            total = total * torch.tensor([e.weight for e in batch], dtype=total.dtype, device=total.device)
        figures = {
            "acc": (rc > rr).float().sum().item(),
            "margin": (rc - rr).sum().item(),
            "chosen_logp": pc.detach().sum().item(),
            "rejected_logp": pr.detach().sum().item(),
            "ref_chosen_logp": ref_c.sum().item(),
            "ref_rejected_logp": ref_r.sum().item(),
            "nll": nll.detach().sum().item(),
        }
        return total, figures

    def summary(self, log: list[dict], epochs: int) -> dict:
        last_epoch = [x for x in log if x["epoch"] == epochs - 1]
        seen = sum(x["pairs"] for x in last_epoch)
        return {
            "loss": self.config.loss,
            # over the last epoch, weighted by pairs: the share of pairs whose chosen reward beats the rejected
            "reward_accuracy": sum(x["acc"] * x["pairs"] for x in last_epoch) / seen,
            "reward_margin": sum(x["margin"] * x["pairs"] for x in last_epoch) / seen,
            "chosen_logp_first": log[0]["chosen_logp"],
            "chosen_logp_last": log[-1]["chosen_logp"],
        }


def train_preferences(
    model,
    tokenizer,
    pairs: list[dict],
    config: DPOConfig,
    seed: int,
    out_dir,
    progress=None,
    ref_model=None,
    kinds: dict[str, str] | None = None,
    **private,
):
    """Train a LoRA adapter on `pairs` ({"prompt", "chosen", "rejected"}); returns (peft model, metrics, log).
    `ref_model`, when given, supplies the reference log-probs instead of the adapter-disabled policy; `kinds`:
    principle id -> kind (for dpo.principle_weights); `private`: the privacy config and ledger
    (rlaif/privacy.py: stage_privacy)."""

    task = PreferenceTask(tokenizer, config, ref_model, kinds)
    return train(model, task, pairs, config, seed, out_dir, progress or SILENT, **private)


# -- the stage ------------------------------------------------------------------------------------------


def outputs(figures: dict) -> list[str]:
    return ["train_log.jsonl", "adapter"] if figures.get("steps") else ["train_log.jsonl"]


def validate(run) -> None:
    check_lora_target(run.initial, run.config.dpo.lora_target, "dpo.lora_target")
    for section in ("principle_weights", "nll_weights", "soft_labels"):
        principle_keys(run.constitution, f"dpo.{section}", getattr(run.config.dpo, section))


def module_names(model_path: str) -> set[str] | None:
    """The module names of a local checkpoint, read from its safetensors headers (no weights are loaded);
    None for a hub id."""

    from safetensors import safe_open

    folder = Path(model_path)
    if not folder.is_dir():
        return None
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        keys = json.loads(index.read_text())["weight_map"].keys()
    else:
        keys = []
        for f in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(str(f), "pt") as fh:
                    keys.extend(fh.keys())
            except Exception:  # noqa: BLE001 - a damaged file is reported when the model is loaded
                return None
    return {k.rsplit(".", 1)[0] for k in keys}


def check_lora_target(model_path: str, targets: list[str], key: str) -> None:
    """Every LoRA target names modules of the model (as peft matches them: the last part of a module name)."""

    names = module_names(model_path)
    if names is None:
        return
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        last = sorted({n.rsplit(".", 1)[-1] for n in names if not n.rsplit(".", 1)[-1].isdigit()})
        raise ConfigError(
            key,
            f"{', '.join(map(repr, missing))} match no module of {model_path} (its modules end in: {', '.join(last)})",
        )


def run(round_) -> dict:

    cfg = round_.config.dpo
    kto = cfg.loss == "kto"
    pairs = read_jsonl(round_.dir / ("train_unpaired.jsonl" if kto else "train_pairs.jsonl"))
    mix = count(p.get("source", "online").split(":")[0] for p in pairs)
    reference = round_.run.initial if cfg.reference == "initial" else round_.model
    if not pairs:
        round_.progress.note(f"round {round_.k}: no preference pairs kept; the model stays {round_.model}")
        if is_main():
            write_jsonl(round_.dir / "train_log.jsonl", [])
        return {
            "steps": 0,
            "pairs": 0,
            "loss_first": None,
            "loss_last": None,
            "reward_accuracy": None,
            "mix": mix,
            "seconds": 0.0,
        }
    if kto:
        n_des = sum(bool(p["label"]) for p in pairs)
        ratio, ok = kto_balance(
            n_des, len(pairs) - n_des, cfg.kto_desirable_weight, cfg.kto_undesirable_weight
        )
        round_.progress.note(
            f"round {round_.k}: KTO on {len(pairs)} examples ({n_des} desirable, {len(pairs) - n_des} undesirable)"
        )
        if not ok:
            round_.progress.note(
                "warning: lambda_D n_D / (lambda_U n_U) = "
                + (f"{ratio:.2f}" if ratio is not None else "undefined (one kind only)")
                + ", outside [1, 4/3], the range the KTO paper recommends: set dpo.kto_desirable_weight or "
                "dpo.kto_undesirable_weight to bring it in"
            )
    else:
        kinds = {p.id: p.kind for p in round_.run.constitution.principles}
        weighted = sum(pair_weight(p.get("principle"), cfg.principle_weights, kinds) != 1 for p in pairs)
        round_.progress.note(
            f"round {round_.k}: DPO on {len(pairs)} pairs"
            + (f" ({weighted} weighted by dpo.principle_weights)" if cfg.principle_weights else "")
        )
    ref_model = None
    if cfg.reference == "initial" and round_.model != round_.run.initial:
        round_.progress.note(f"the initial model {round_.run.initial} is the reference")
        ref_model, _ = round_.pool.model(round_.run.initial)
    # trained in place: no longer the pool's copy of round_.model
    model, tok = round_.pool.take(round_.model, training=True)
    t0 = time.perf_counter()
    seed = round_.seed * 1000 + round_.k
    if kto:
        trained, metrics, log = train(
            model,
            KTOTask(tok, cfg, ref_model),
            pairs,
            cfg,
            seed,
            round_.dir,
            round_.progress,
            **stage_privacy(round_, "dpo"),
        )
        metrics["kto_balance"] = ratio
    else:
        trained, metrics, log = train_preferences(
            model,
            tok,
            pairs,
            cfg,
            seed,
            round_.dir,
            round_.progress,
            ref_model,
            kinds,
            **stage_privacy(round_, "dpo"),
        )
        if cfg.principle_weights:
            metrics["weighted_pairs"] = weighted
    round_.pool.put(str(round_.dir / "adapter"), trained, tok)  # for the merge stage
    if is_main():  # under the launcher, rank 0 alone writes
        write_jsonl(round_.dir / "train_log.jsonl", ({"schema": SCHEMA_VERSION, **x} for x in log))
    reference = portable(reference, round_.run.dir)
    return {**metrics, "mix": mix, "reference": reference, "seconds": time.perf_counter() - t0}
