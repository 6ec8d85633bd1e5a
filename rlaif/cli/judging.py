"""Verbs that judge or sample outside a run: judge-eval, compare, sample, eval.

rlaif judge-eval --data ../shared/data/hh-harmless-dev.jsonl --limit 100
rlaif eval runs/demo
"""

from __future__ import annotations

import time

from rich.table import Table

from rlaif.cli.common import (
    EVALUATOR_HELP,
    RichProgress,
    console,
    count,
    evaluator_overrides,
    finite,
    float_list,
    model_ref,
    non_negative,
    positive,
    progress_bars,
    rounds_of,
    run_folder,
)
from rlaif.compare import compare_models
from rlaif.config import JudgeConfig, ModelConfig, apply_overrides, build_config, load_config
from rlaif.data import DataError, load_prompts, write_json, write_jsonl
from rlaif.eval_report import eval_table, judge_eval_table
from rlaif.evaluate import evaluate_run, load_eval_prompts
from rlaif.judge import build_judge
from rlaif.judge_eval import INJECTION_SET, evaluate, load_labelled
from rlaif.layout import completed_rounds, round_model
from rlaif.models import pick_device, resolve_model
from rlaif.pool import ModelPool
from rlaif.principles import load_constitution
from rlaif.sampling import best_of, realigned
from rlaif.untrusted import literal


def cmd_judge_eval(args) -> int:

    data = args.data or str(INJECTION_SET)
    pairs = load_labelled(data)[: args.limit or None]
    constitution = load_constitution(args.constitution)
    path = resolve_model(args.judge_model, notify=lambda m: console.print(literal(m, "dim")))
    mc = ModelConfig(policy=path)
    jc = JudgeConfig(
        mode=args.mode,
        principles_per_pair=args.principles_per_pair,
        harden=not args.no_harden,
        batch_size=args.batch_size,
    )
    judge = build_judge(path, jc, constitution, ModelPool(mc, pick_device(mc.device)))
    t0 = time.perf_counter()
    with progress_bars() as bar:
        result = evaluate(pairs, judge, constitution, args.seed, RichProgress(bar))
    seconds = time.perf_counter() - t0
    result["settings"] = {
        "data": data,
        "judge_model": path,
        "constitution": constitution.path,
        "pairs": len(pairs),
        "seed": args.seed,
        "mode": args.mode,
        "principles_per_pair": args.principles_per_pair,
        "harden": not args.no_harden,
        "seconds": round(seconds, 1),
    }
    write_json(args.out, result)
    console.print(judge_eval_table(result))
    console.print(literal(f"wrote {args.out}"))
    return 0


def cmd_compare(args) -> int:

    a, b = model_ref(args.a), model_ref(args.b)
    prompts = [p["prompt"] for p in load_prompts(args.prompts)][: args.limit or None]
    config = build_config(apply_overrides({}, evaluator_overrides(args.evaluator)))
    judge_model = model_ref(args.judge_model) if args.judge_model else a
    with progress_bars() as bar:
        result = compare_models(
            a,
            b,
            prompts,
            judge_model,
            config,
            RichProgress(bar),
            args.max_new_tokens,
            args.temperature,
            args.seed,
            pick_device("auto"),
        )
    table = Table(show_lines=True, title=literal(f"A = {args.a}   B = {args.b}"))
    table.add_column("prompt", ratio=1)
    table.add_column("A", ratio=2)
    table.add_column("B", ratio=2)
    table.add_column("P(A better)", justify="right")
    for r in result["rows"][: args.show]:
        table.add_row(literal(r["prompt"]), literal(r["a"]), literal(r["b"]), f"{r['p_a']:.2f}")
    console.print(table)
    w = result["win_rate_a"]
    console.print(
        literal(
            f"A wins {w['win_rate']:.0%} of {w['n']} prompts (95% interval {w['ci95'][0]:.0%}-{w['ci95'][1]:.0%}; "
            f"ties count half), judged by {result['judge_model']} in {result['judge_mode']} mode"
        )
    )
    if args.out:
        write_json(args.out, result)
        console.print(literal(f"wrote {args.out}"))
    return 0


def cmd_sample(args) -> int:

    if args.best_of and args.realign is not None:
        raise DataError("--best-of and --realign are separate methods: use one at a time")
    if args.best_of and args.temperature <= 0:
        raise DataError("--best-of samples several different responses: it needs --temperature > 0")
    if args.missing_eos_penalty and not args.best_of:
        raise DataError("--missing-eos-penalty applies to --best-of's ranking")
    prompts = [p["prompt"] for p in load_prompts(args.prompts)][: args.limit or None]
    path = round_model(args.run, args.round)
    pool = ModelPool(ModelConfig(policy=path), pick_device("auto"))
    settings = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    with progress_bars() as bar:
        if args.best_of:
            c = load_constitution(args.constitution)
            rows = best_of(
                path,
                pool,
                prompts,
                args.best_of,
                c,
                args.evaluator,
                progress=RichProgress(bar),
                missing_eos_penalty=args.missing_eos_penalty,
                **settings,
            )
        else:
            lam = 1.0 if args.realign is None else args.realign
            reference = round_model(args.run, args.reference_round) if lam != 1 else None
            rows = realigned(path, reference, pool, prompts, lam, progress=RichProgress(bar), **settings)
    if args.out:
        write_jsonl(args.out, rows)
    table = Table(show_lines=True)
    table.add_column("prompt", ratio=1)
    table.add_column("response", ratio=2)
    for r in rows[: args.show]:
        table.add_row(literal(r["prompt"]), literal(r["response"]))
    console.print(table)
    if args.out:
        console.print(literal(f"wrote {len(rows)} samples to {args.out}"))
    return 0


def cmd_eval(args) -> int:

    run_folder(args.run_dir)
    config = load_config(args.run_dir, args.set + evaluator_overrides(args.evaluator))
    rounds = rounds_of(args.run_dir, args.rounds, "--rounds", [0, *completed_rounds(args.run_dir)]) or None
    realign = float_list(args.realign, "--realign") if args.realign else []
    prompts = load_eval_prompts(args.harmful, args.benign, args.limit, args.samples)
    with progress_bars() as bar:
        summary = evaluate_run(
            args.run_dir,
            rounds,
            prompts,
            config,
            args.judge_model,
            realign,
            args.best_of,
            RichProgress(bar),
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
            device=pick_device(config.model.device),
            backend=config.generate.backend,
        )
    console.print(eval_table(summary))
    console.print(literal(f"wrote {args.run_dir}/eval.json and the chart {summary['chart']}"))
    return 0


def add_parsers(sub) -> None:
    """The parsers of this module's verbs, on the `rlaif` command's subparsers."""
    p = sub.add_parser("judge-eval", help="agreement of the judge with human preference labels")
    p.add_argument(
        "--data",
        help='JSON Lines of {"prompt", "chosen", "rejected"} (default: the shipped injection set, evals/injection.jsonl)',
    )
    p.add_argument("--mode", choices=["pointwise", "logprob", "rationale"], default="pointwise")
    p.add_argument("--principles-per-pair", type=positive, default=1, help="ensemble size (default 1)")
    p.add_argument("--no-harden", action="store_true", help="judge responses without defusing injections")
    p.add_argument(
        "--judge-model", default="smollm2-135m-instruct", help="judge model (default: the embedded one)"
    )
    p.add_argument("--constitution", default="default", help="name or path (default: default)")
    p.add_argument("--limit", type=count, default=0, help="judge the first N pairs only (0 = all)")
    p.add_argument("--batch-size", type=positive, default=8)
    p.add_argument("--seed", type=int, default=0, help="seeds the principle sampled for each pair")
    p.add_argument("--out", default="judge-eval.json", help="JSON results (default: judge-eval.json)")
    p.set_defaults(func=cmd_judge_eval)

    p = sub.add_parser(
        "compare", help="two models answer the same prompts; the judge's verdicts side by side"
    )
    p.add_argument("a", help="model path, hub id, embedded name, or RUN_DIR:K (round K of a run)")
    p.add_argument("b")
    p.add_argument("--prompts", required=True, help='JSON Lines of {"prompt": str}')
    p.add_argument("--judge-model", help="default: model A")
    p.add_argument("--evaluator", help=EVALUATOR_HELP)
    p.add_argument("--limit", type=count, default=0)
    p.add_argument("--max-new-tokens", type=positive, default=96)
    p.add_argument("--temperature", type=non_negative, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=count, default=10)
    p.add_argument("--out", help="write the verdicts as JSON")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sample", help="sample a round's model: DeRa realignment (--realign) or best-of-n")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--round", type=count, required=True, help="the aligned model's round (0 = initial model)")
    p.add_argument("--prompts", required=True, help='JSON Lines of {"prompt": str}')
    p.add_argument(
        "--realign", type=finite, help="DeRa lambda: 0 = reference, 1 = the round's model, >1 extrapolates"
    )
    p.add_argument("--reference-round", type=count, default=0, help="DeRa reference round (default 0)")
    p.add_argument("--best-of", type=count, default=0, help="sample N, keep the one the judge ranks first")
    p.add_argument("--constitution", default="default")
    p.add_argument("--evaluator", help=EVALUATOR_HELP + " (ranks the best-of-n samples)")
    p.add_argument(
        "--missing-eos-penalty",
        type=non_negative,
        default=0.0,
        help="best-of-n by reward models (--evaluator, or the constitution's [reward_models]): a sample cut at "
        "--max-new-tokens loses this much reward (log-odds) against a finished one",
    )
    p.add_argument("--max-new-tokens", type=positive, default=128)
    p.add_argument("--temperature", type=non_negative, default=0.8, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=count, default=0, help="first N prompts only")
    p.add_argument("--show", type=count, default=5, help="samples to print")
    p.add_argument("--out", help="write the samples as JSON Lines")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "eval", help="evaluate each round on held-out prompts: win rate, harmlessness, refusals, KL"
    )
    p.add_argument("run_dir")
    p.add_argument("--rounds", default="", help="comma-separated rounds (default: 0 and every completed one)")
    p.add_argument("--harmful", help="harmful prompts, JSON Lines (default: evals/harmful.jsonl)")
    p.add_argument("--benign", help="benign prompts, JSON Lines (default: evals/benign.jsonl)")
    p.add_argument("--limit", type=count, default=0, help="first N prompts of each set")
    p.add_argument(
        "--samples",
        type=positive,
        default=1,
        help="responses per prompt, each judged and counted (win-rate intervals over prompts)",
    )
    p.add_argument("--judge-model", help="judge for every round (default: round 0's model)")
    p.add_argument("--evaluator", help=EVALUATOR_HELP)
    p.add_argument("--realign", default="", help="DeRa lambdas for the last round, e.g. 0,0.5,1,2")
    p.add_argument("--best-of", type=count, default=0, help="add round 0 best-of-N as a baseline row")
    p.add_argument("--max-new-tokens", type=positive, default=96)
    p.add_argument("--temperature", type=non_negative, default=1.0, help="1.0 keeps the KL estimate unbiased")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config key (generate.backend=vllm: plain samples come from a vLLM engine)",
    )
    p.set_defaults(func=cmd_eval)
