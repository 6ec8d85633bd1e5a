"""Training stages on a file alone (also under torchrun / accelerate launch): train (the DPO family), sft.

rlaif train --pairs prefs.jsonl --model smollm2-135m-instruct --out out/
"""

from __future__ import annotations

from pathlib import Path

from rlaif import recompute
from rlaif.cli.common import DATA_HELP, RichProgress, console, progress_bars
from rlaif.config import apply_overrides, build_config, load_config
from rlaif.data import DataError, load_feedback, load_sft, unpair
from rlaif.kto import train_kto
from rlaif.launch import close_process_group, init_process_group
from rlaif.models import load_model, load_tokenizer, resolve_model, save_model
from rlaif.privacy import Ledger
from rlaif.sharding import is_sharded, sharded_training
from rlaif.stages.dpo import train_preferences
from rlaif.stages.sft import train_sft
from rlaif.trainer import merge
from rlaif.untrusted import literal


def full_config(args):
    """The verb's config: --config (a run's config.toml) or the defaults, with --set applied."""
    if args.config:
        return load_config(args.config, args.set)
    return build_config(apply_overrides({}, args.set))


def section_config(args, section: str):
    return getattr(full_config(args), section)


def train_from_file(args, section: str, load, train, count_key: str) -> int:
    """`rlaif train` and `rlaif sft`: train a LoRA adapter on a file alone, merge it, save the model; under
    torchrun or `accelerate launch` every process trains its share of each step and rank 0 writes."""
    import torch

    rank, _ = init_process_group()  # torchrun / accelerate launch describe the group in the environment
    config = full_config(args)
    cfg = getattr(config, section)
    path = resolve_model(args.model)
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    examples = load(args.data)
    tok = load_tokenizer(path)
    with progress_bars(remaining=True) as bar:
        progress = RichProgress(bar) if rank == 0 else None
        privacy = config.privacy  # --set privacy.epsilon=...: DP-SGD, the ledger in --out
        private = (
            {"privacy": privacy, "ledger": Ledger(Path(args.out) / "privacy.json", section, 0)}
            if privacy.active
            else {}
        )
        # sharded (RLAIF_SHARD=fsdp): loaded on the CPU, each process's shards moved to its GPU by fully_shard
        model = (
            load_model(path, "cpu", "bfloat16")
            if device != "cpu" and sharded_training()
            else load_model(path, device)
        )
        # --set launch.activation_checkpointing=true (or RLAIF_ACTIVATION_CHECKPOINTING=1): layers recomputed
        with recompute.requested_for(config.launch.activation_checkpointing):
            trained, metrics, _ = train(model, tok, examples, cfg, args.seed, args.out, progress, **private)
    sharded = any(is_sharded(p) for p in trained.parameters())
    merged = None if sharded else merge(trained)
    if rank == 0:
        if sharded:  # FSDP2 (launch.shard): the gathered adapter rank 0 wrote, folded into a fresh base
            from peft import PeftModel

            merged = PeftModel.from_pretrained(load_model(path), f"{args.out}/adapter").merge_and_unload()
        save_model(merged, tok, f"{args.out}/model")
        console.print(
            literal(
                f"trained on {metrics[count_key]} {count_key} in {metrics['steps']} steps (loss "
                f"{metrics['loss_first']:.3f} -> {metrics['loss_last']:.3f}); merged model: {args.out}/model"
            )
        )
    del model, trained, merged
    close_process_group()
    return 0


def cmd_train(args) -> int:

    def load(source):  # KTO reads unpaired examples and pairs (unpaired); the DPO losses read pairs
        records = load_feedback(source)
        if not kto:
            if any(r.get("unpaired") for r in records):
                raise DataError(
                    f"{source}: holds unpaired examples (prompt/completion/label): add --set dpo.loss=kto"
                )
            return records
        return [r for r in records if r.get("unpaired")] + unpair(
            [r for r in records if not r.get("unpaired")]
        )

    kto = section_config(args, "dpo").loss == "kto"
    if kto:
        return train_from_file(args, "dpo", load, train_kto, "examples")
    return train_from_file(args, "dpo", load, train_preferences, "pairs")


def cmd_sft(args) -> int:

    return train_from_file(args, "sft", load_sft, train_sft, "examples")


def add_parsers(sub) -> None:
    """The parsers of this module's verbs, on the `rlaif` command's subparsers."""
    for verb, section, what, func in (
        ("train", "train", "preference training", cmd_train),
        ("sft", "sft", "supervised fine-tuning", cmd_sft),
    ):
        p = sub.add_parser(verb, help=f"{what} on a file alone (runs under torchrun / accelerate launch)")
        data = ["--pairs", "--data"] if verb == "train" else ["--data"]
        p.add_argument(*data, dest="data", required=True, help=DATA_HELP[verb])
        p.add_argument("--model", required=True, help="model path, hub id or the embedded name")
        p.add_argument("--out", required=True, help="folder for adapter/, model/ and checkpoint/")
        p.add_argument(
            "--config", help=f"a run's config.toml (its [{section}] section); default: the defaults"
        )
        p.add_argument("--set", action="append", default=[], metavar=f"{section}.KEY=VALUE")
        p.add_argument("--seed", type=int, default=0)
        p.set_defaults(func=func)
