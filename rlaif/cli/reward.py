"""Reward models and the prompt classifier: rm train / eval, prompt-classifier train / eval.

rlaif rm eval --data ../shared/data/hh-harmless-dev.jsonl --model smollm2-135m-harmless
"""

from __future__ import annotations

from rlaif.applicability import PromptClassifier, accuracy, prompts_of, train_classifier
from rlaif.cli.common import RichProgress, console, count, finite, positive, progress_bars
from rlaif.config import ModelConfig
from rlaif.config.loop import LoopConfig
from rlaif.data import DataError, load_preferences, write_json
from rlaif.eval_report import judge_eval_table, length_split_table
from rlaif.judge_eval import wilson
from rlaif.launch import close_process_group, init_process_group
from rlaif.models import pick_device
from rlaif.pool import ModelPool
from rlaif.principles import load_constitution
from rlaif.progress import SILENT
from rlaif.reward.conditioned import train_conditioned
from rlaif.reward.fit import train_frozen
from rlaif.reward.format import resolve_reward_model, with_principle_text
from rlaif.reward.lora import train_lora
from rlaif.reward.measure import measure
from rlaif.reward.refusals import refusal_pairs
from rlaif.untrusted import literal


def cmd_rm(args) -> int:
    """`rlaif rm train` and `rlaif rm eval`: Bradley-Terry reward models (rlaif/reward/)."""
    return rm_train(args) if args.action == "train" else rm_eval(args)


def _pool():

    return ModelPool(ModelConfig(), pick_device("auto"))


def rm_train(args) -> int:

    if args.mode == "conditioned":
        return rm_train_conditioned(args)
    pairs = [p for source in args.pairs for p in load_preferences(source)]
    sources = list(args.pairs)
    if args.refusal_pairs:
        pairs += refusal_pairs(pairs, args.refusal_pairs, args.seed)
        sources.append(
            f"refusal contrast: {args.refusal_pairs} of these prompts' chosen answers over a refusal"
        )
    if args.principle_conditioned:
        pairs = with_principle_text(pairs, load_constitution(args.constitution), "--principle-conditioned")
    common = dict(
        sources=sources,
        max_length=args.max_length,
        margin=args.margin,
        centring=args.centring,
        seed=args.seed,
        principle_conditioned=args.principle_conditioned,
    )
    rank = init_process_group()[0] if args.mode == "lora" else 0  # torchrun: each process trains its share
    with progress_bars() as bar:
        if args.mode == "lora":
            loop = LoopConfig(
                epochs=args.epochs,
                learning_rate=args.learning_rate,
                batch_size=args.batch_size,
                max_length=args.max_length,
                lora_r=args.lora_r,
                lora_alpha=2 * args.lora_r,
            )
            spec = train_lora(
                pairs,
                args.model,
                args.out,
                _pool(),
                loop,
                progress=RichProgress(bar) if rank == 0 else SILENT,
                **common,
            )
            close_process_group()  # under torchrun: every process is done with the group
            if spec is None:  # not rank 0: rank 0 wrote the reward model
                return 0
        else:
            spec = train_frozen(pairs, args.model, args.out, _pool(), progress=RichProgress(bar), **common)
    f = spec.figures
    if f.get("identical_dropped"):
        console.print(
            literal(
                f"skipped {f['identical_dropped']} pairs whose chosen and rejected are the same text "
                "(no preference to learn)",
                "yellow",
            )
        )
    if args.mode == "lora":
        what = f"LoRA reward model on {f['pairs']} pairs: loss {f['loss_first']:.3f} -> {f['loss_last']:.3f}"
    else:
        cv = (
            f"cross-validated accuracy {max(f['cv_accuracy'].values()):.1%}"
            if f["cv_accuracy"]
            else "not cross-validated: fewer than 10 pairs"
        )
        what = f"reward head on {f['pairs']} pairs: L2 {f['l2']:g} ({cv})"
    console.print(
        literal(
            f"{what}, training accuracy {f['train_accuracy']:.1%}, {f['seconds']:.0f} s; wrote {args.out}"
        )
    )
    return 0


def rm_train_conditioned(args) -> int:

    if args.refusal_pairs:
        raise DataError("--refusal-pairs is for one reward model's own pairs, not --mode conditioned")
    if len(args.kinds) != len(args.pairs):
        raise DataError(
            "rlaif rm train --mode conditioned needs one --kinds entry per --pairs file "
            f"(got {len(args.pairs)} files, {len(args.kinds)} kinds)"
        )
    sets = list(zip(args.pairs, args.kinds, strict=True))
    with progress_bars() as bar:
        spec = train_conditioned(
            [(load_preferences(s), k) for s, k in sets],
            args.model,
            args.out,
            _pool(),
            load_constitution(args.constitution),
            sources=[f"{s} ({k})" for s, k in sets],
            max_length=args.max_length,
            centring=args.centring,
            seed=args.seed,
            progress=RichProgress(bar),
        )
    f = spec.figures
    console.print(
        literal(
            f"principle-conditioned reward model on {f['pairs']} pairs ({f['rows']} rows under "
            f"{len(f['principles'])} principles): L2 {f['l2']:g} (cross-validated accuracy "
            f"{max(f['cv_accuracy'].values()):.1%}), training accuracy {f['train_accuracy']:.1%}, "
            f"{f['seconds']:.0f} s; wrote {args.out}"
        )
    )
    return 0


def rm_eval(args) -> int:

    with progress_bars() as bar:
        result = measure(
            args.data,
            args.model,
            _pool(),
            args.constitution,
            args.kind or None,
            args.limit,
            RichProgress(bar),
            refusals=args.refusal_pairs,
        )
    write_json(args.out, result)
    console.print(judge_eval_table(result))
    console.print(length_split_table(result["lengths"]))
    console.print(literal(f"wrote {args.out}"))
    return 0


def cmd_rm_checked(args) -> int:
    if args.action == "eval":
        resolve_reward_model(args.model, "--model")  # a wrong name fails now, before the data is read
    return cmd_rm(args)


def cmd_prompt_classifier(args) -> int:
    """`rlaif prompt-classifier train` / `eval`: which prompts are harmful requests (rlaif/applicability.py)."""

    if not args.harmful or not args.benign:
        raise DataError(
            f"rlaif prompt-classifier {args.action} needs --harmful F [F ...] and --benign F [F ...]"
        )
    harmful = [p for f in args.harmful for p in prompts_of(f)][: args.limit or None]
    benign = [p for f in args.benign for p in prompts_of(f)][: args.limit or None]
    pool = ModelPool(ModelConfig(), pick_device("auto"))
    if args.action == "train":
        if not args.out:
            raise DataError("rlaif prompt-classifier train needs --out DIR")
        with progress_bars() as bar:
            spec = train_classifier(
                harmful, benign, args.model, args.out, pool, args.harmful + args.benign, args.max_length,
                seed=args.seed, progress=RichProgress(bar),
            )  # fmt: skip
        f = spec.figures
        console.print(
            literal(
                f"prompt classifier on {f['harmful']} harmful and {f['benign']} benign prompts: L2 {f['l2']:g} "
                f"(cross-validated accuracy {max(f['cv_accuracy'].values()):.1%}), training accuracy "
                f"{f['train_accuracy']:.1%}, {f['seconds']:.0f} s; wrote {args.out}"
            )
        )
        return 0
    clf = PromptClassifier(args.model, pool)
    with progress_bars() as bar:
        ph = clf.p_harmful(harmful, RichProgress(bar))
        pb = clf.p_harmful(benign, RichProgress(bar))
    result = {
        "model": args.model,
        "threshold": clf.spec.threshold,
        "harmful": args.harmful,
        "benign": args.benign,
    }
    for name, ps, label in (("harmful", ph, 1), ("benign", pb, 0)):
        acc = accuracy(ps, [label] * len(ps), clf.spec.threshold)
        k = round(acc * len(ps))
        result[name] = {"prompts": len(ps), "accuracy": acc, "ci95": wilson(k, len(ps))}
        lo, hi = result[name]["ci95"]
        console.print(
            literal(
                f"{name} prompts classified right: {acc:.1%} of {len(ps)} (95% interval {lo:.0%}-{hi:.0%})"
            )
        )
    write_json(args.out or "prompt-classifier-eval.json", result)
    console.print(literal(f"wrote {args.out or 'prompt-classifier-eval.json'}"))
    return 0


def add_parsers(sub) -> None:
    """The parsers of this module's verbs, on the `rlaif` command's subparsers."""
    p = sub.add_parser("rm", help="train or evaluate a Bradley-Terry reward model")
    actions = p.add_subparsers(dest="action", required=True)
    t = actions.add_parser("train", help="train a reward model on preference files")
    t.add_argument(
        "--pairs", nargs="+", required=True, help="TRL-format preference files (human or AI labels)"
    )
    t.add_argument("--out", required=True, help="the reward model folder")
    t.add_argument(
        "--model", default="smollm2-135m-instruct", help="the body model (default: the embedded one)"
    )
    t.add_argument(
        "--mode",
        choices=["frozen", "lora", "conditioned"],
        default="frozen",
        help="head only, LoRA + head, or heads mixed by the principle's text (one kind per --pairs file)",
    )
    t.add_argument(
        "--kinds", nargs="+", default=[], help="conditioned: the principle kind of each --pairs file"
    )
    t.add_argument(
        "--principle-conditioned",
        action="store_true",
        help="put each pair's principle question into the input (pairs from a run's preferences.jsonl)",
    )
    t.add_argument(
        "--constitution", default="default", help="where --principle-conditioned and --kinds read principles"
    )
    t.add_argument("--max-length", type=positive, default=512, help="conversation + response tokens")
    t.add_argument("--epochs", type=positive, default=1, help="lora mode")
    t.add_argument("--learning-rate", type=finite, default=1e-4, help="lora mode")
    t.add_argument("--batch-size", type=positive, default=4, help="lora mode: pairs per micro-batch")
    t.add_argument("--lora-r", type=positive, default=16, help="lora mode")
    t.add_argument("--margin", type=finite, default=0.0, help="Bradley-Terry margin")
    t.add_argument("--centring", type=finite, default=0.0, help="reward centring weight (arXiv:2312.09244)")
    t.add_argument(
        "--refusal-pairs",
        type=count,
        default=0,
        help="add N pairs in which a prompt's chosen answer beats a refusal (teaches a helpfulness model that "
        "declining an ordinary request is unhelpful; rlaif/reward/refusals.py)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_rm_checked)
    e = actions.add_parser("eval", help="a reward model against labelled pairs")
    e.add_argument(
        "--data", required=True, help='labelled pairs, JSON Lines of {"prompt", "chosen", "rejected"}'
    )
    e.add_argument(
        "--model", default="smollm2-135m-harmless", help="a reward model folder or a shipped head's name"
    )
    e.add_argument("--out", default="rm-eval.json", help="JSON results (default rm-eval.json)")
    e.add_argument("--limit", type=count, default=0, help="the first N pairs only")
    e.add_argument(
        "--kind",
        default="",
        help="judge every pair under a principle of this kind (a conditioned model reads it)",
    )
    e.add_argument("--constitution", default="default", help="where --kind reads principles")
    e.add_argument(
        "--refusal-pairs",
        type=count,
        default=0,
        help="measure instead N of the file's chosen answers against refusal phrasings training never uses",
    )
    e.set_defaults(func=cmd_rm_checked)

    p = sub.add_parser(
        "prompt-classifier", help="train or evaluate the classifier of harmful requests (judge.applicability)"
    )
    actions = p.add_subparsers(dest="action", required=True)
    t = actions.add_parser("train", help="train the classifier on harmful and ordinary requests")
    t.add_argument(
        "--model", default="smollm2-135m-instruct", help="the body model (default: the embedded one)"
    )
    t.add_argument("--out", required=True, help="the classifier folder")
    t.add_argument("--max-length", type=positive, default=256, help="prompt tokens")
    t.add_argument("--seed", type=int, default=0)
    e = actions.add_parser("eval", help="the classifier's accuracy on harmful and ordinary requests")
    e.add_argument(
        "--model", default="smollm2-135m-harmful-prompt", help="a classifier folder or a shipped one"
    )
    e.add_argument("--out", help="JSON results")
    for q in (t, e):
        q.add_argument(
            "--harmful", nargs="+", default=[], help="JSON Lines of harmful requests (prompt or messages)"
        )
        q.add_argument("--benign", nargs="+", default=[], help="JSON Lines of ordinary requests")
        q.add_argument("--limit", type=count, default=0, help="the first N prompts of each set (0 = all)")
        q.set_defaults(func=cmd_prompt_classifier)
