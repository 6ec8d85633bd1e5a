"""The `rlaif` command: thin verbs over library functions. Only this module prints.

    rlaif run runs/demo --rounds 2        # generate -> judge -> DPO -> merge, twice (resumes if interrupted)
    rlaif report runs/demo                # one row per round, then judged pairs side by side
    rlaif principles                      # the constitution's principles
    rlaif principles check [FILES]        # validate principle and constitution files (exit 2 on problems)

Bad input exits with code 2 and a message naming the file and key or line; no traceback.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichBar

from rlaif.data import DataError
from rlaif.progress import Progress
from rlaif.untrusted import console as literal_console
from rlaif.untrusted import join, literal

# every verb prints through these: markup off, controls made visible (rlaif/untrusted.py)
console = literal_console()
err = literal_console(stderr=True)


class RichProgress(Progress):
    """Progress bars on the terminal, one per stage."""

    def __init__(self, bar: RichBar):
        self.bar, self.task = bar, None

    def stage(self, name, total=None):
        if self.task is not None:
            self.bar.update(self.task, visible=False)
        self.task = self.bar.add_task(name, total=total)

    def advance(self, n=1):
        if self.task is not None:
            self.bar.advance(self.task, n)

    def note(self, message):
        self.bar.console.print(literal(message, "dim"))


def progress_bars(remaining: bool = False) -> RichBar:
    """The progress bars of a long verb: stage name, bar, done/total, time spent (and left)."""
    columns = [
        TextColumn("{task.description:<20}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    if remaining:
        columns.append(TimeRemainingColumn())
    return RichBar(*columns, console=console, transient=False)


def error(message) -> None:
    """One "error: ..." line, unwrapped (paths stay whole, the output can be grepped), shown exactly as
    written: brackets in paths and values are text, never markup."""
    err.print(join(("error: ", "red"), message), soft_wrap=True)


def print_problems(problems) -> None:
    for p in problems:
        error(p)
    err.print(f"{len(problems)} problem(s)")


def cmd_run(args) -> int:
    from rlaif.rounds import run

    with progress_bars(remaining=True) as bar:
        results = run(args.run_dir, args.rounds, args.set, RichProgress(bar))
    from rlaif.report import run_report

    console.print(run_report(args.run_dir, examples=1))
    console.print(join((f"{len(results)} round(s) complete", "green"), " in ", args.run_dir))
    return 0


def cmd_report(args) -> int:
    from rlaif.report import run_report

    run_folder(args.run_dir)
    console.print(run_report(args.run_dir, examples=args.examples))
    return 0


def cmd_init(args) -> int:
    from rlaif.shipped import init_run

    folder = init_run(args.run_dir)
    console.print(
        join(
            "made ",
            str(folder),
            ": config.toml, prompts.jsonl, constitution/ and principles/ (edit them); run it with\n  rlaif run ",
            str(folder),
            " --rounds 2",
        )
    )
    return 0


def cmd_principles(args) -> int:
    from rlaif.principles import check_paths, constitution_path, load_constitution
    from rlaif.report import principles_table

    if args.files and args.action != "check":
        error(f"files are for `check`; show a constitution with --constitution {args.files[0]}")
        return 2
    if args.action == "check":
        if args.files or args.constitution != "default":
            files = args.files or [constitution_path(args.constitution)]
        else:  # every shipped file
            files = [args.principles_dir, args.constitution_dir]
        problems = check_paths(files, args.mode, not args.no_critique)
        if problems:
            print_problems(problems)
            return 2
        console.print("all principle and constitution files are valid", style="green")
        return 0
    console.print(principles_table(load_constitution(args.constitution)))
    return 0


def cmd_judge_eval(args) -> int:
    from rlaif.config import JudgeConfig, ModelConfig
    from rlaif.data import write_json
    from rlaif.judge import build_judge
    from rlaif.judge_eval import INJECTION_SET, evaluate, load_labelled
    from rlaif.models import ModelPool, pick_device, resolve_model
    from rlaif.principles import load_constitution
    from rlaif.report import judge_eval_table

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


def int_list(text: str, flag: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2]; anything else is a DataError naming the flag."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise DataError(f"{flag}: expected whole numbers separated by commas, got {text!r}") from None
    if any(v < 0 for v in values):
        raise DataError(f"{flag}: round numbers are >= 0, got {text!r}")
    return values


def float_list(text: str, flag: str) -> list[float]:
    import math

    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise DataError(f"{flag}: expected numbers separated by commas, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise DataError(f"{flag}: expected finite numbers, got {text!r}")
    return values


def run_folder(path: str):
    """A run folder given on the command line: it must exist and hold config.toml."""
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: no such run folder")
    if not p.is_dir() or not (p / "config.toml").is_file():
        raise DataError(f"{path}: not a run folder (no config.toml)")
    return p


def rounds_of(run_dir, text: str, flag: str, present) -> list[int]:
    """The rounds a verb works on: those named (each must be present), or all present ones."""
    if not text:
        return present
    rounds = int_list(text, flag)
    missing = [k for k in rounds if k not in present]
    if missing:
        raise DataError(
            f"{run_dir}: no round {', '.join(map(str, missing))} ({flag}; rounds here: "
            f"{', '.join(map(str, present)) or 'none'})"
        )
    return rounds


def cmd_export(args) -> int:
    from rlaif.data import export_preferences, read_jsonl
    from rlaif.layout import judged_rounds, round_dir

    run_folder(args.run_dir)
    present = [
        k for k in judged_rounds(args.run_dir) if (round_dir(args.run_dir, k) / "preferences.jsonl").is_file()
    ]
    rounds = rounds_of(args.run_dir, args.rounds, "--rounds", present)
    if not rounds:
        raise DataError(f"{args.run_dir}: no round has preference pairs yet (run: rlaif run {args.run_dir})")
    pairs = []
    for k in rounds:
        pairs.extend(read_jsonl(round_dir(args.run_dir, k) / "preferences.jsonl"))
    n = export_preferences(pairs, args.out, args.format, args.conversational, args.force)
    console.print(
        literal(f"wrote {n} preference pairs of round(s) {', '.join(map(str, rounds))} to {args.out}")
    )
    return 0


def cmd_sample(args) -> int:
    from rich.table import Table

    from rlaif.config import GenerateConfig, JudgeConfig, ModelConfig
    from rlaif.data import DataError, load_prompts, write_jsonl
    from rlaif.layout import round_model
    from rlaif.models import ModelPool, pick_device
    from rlaif.realign import realigned_generate

    if args.best_of and args.realign is not None:
        raise DataError("--best-of and --realign are separate methods: use one at a time")
    if args.best_of and args.temperature <= 0:
        raise DataError("--best-of samples several different responses: it needs --temperature > 0")
    prompts = [p["prompt"] for p in load_prompts(args.prompts)][: args.limit or None]
    device = pick_device("auto")
    path = round_model(args.run, args.round)
    pool = ModelPool(ModelConfig(policy=path), device)
    model, tok = pool.model(path)
    rows = []
    with progress_bars() as bar:
        progress = RichProgress(bar)
        if args.best_of:
            from rlaif.generate.hf import TransformersGenerator
            from rlaif.judge import build_judge
            from rlaif.judge.ranking import best_of_n
            from rlaif.principles import load_constitution

            gc = GenerateConfig(
                samples_per_prompt=args.best_of,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
            )
            gen = TransformersGenerator(path, gc, ModelConfig(policy=path), model=model, tokenizer=tok)
            groups = gen.generate(prompts, args.best_of, args.seed, progress)
            constitution = load_constitution(args.constitution)
            jc = JudgeConfig(mode="reward", reward_model=args.evaluator) if args.evaluator else JudgeConfig()
            judge = build_judge(path, jc, constitution, pool)
            picks = best_of_n(judge, constitution, prompts, [[s.text for s in g] for g in groups], args.seed)
            for prompt, group, (best, scores) in zip(prompts, groups, picks, strict=True):
                rows.append(
                    {
                        "prompt": prompt,
                        "response": group[best].text,
                        "best_of": args.best_of,
                        "candidates": [s.text for s in group],
                        "scores": scores,
                        "best": best,
                    }
                )
        else:
            lam = 1.0 if args.realign is None else args.realign
            ref = None
            if lam != 1:
                ref, _ = pool.model(round_model(args.run, args.reference_round))
            samples = realigned_generate(
                model,
                ref,
                tok,
                prompts,
                lam,
                args.max_new_tokens,
                args.temperature,
                seed=args.seed,
                progress=progress,
            )
            for prompt, s in zip(prompts, samples, strict=True):
                rows.append(
                    {
                        "prompt": prompt,
                        "response": s.text,
                        "realign": lam,
                        "tokens": s.tokens,
                        "finished": s.finished,
                    }
                )
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
    from rlaif.config import load_config
    from rlaif.evaluate import evaluate_run, load_eval_prompts
    from rlaif.layout import completed_rounds
    from rlaif.models import pick_device
    from rlaif.report import eval_table

    run_folder(args.run_dir)
    config = load_config(args.run_dir, args.set + evaluator_overrides(args.evaluator))
    rounds = rounds_of(args.run_dir, args.rounds, "--rounds", [0, *completed_rounds(args.run_dir)]) or None
    realign = float_list(args.realign, "--realign") if args.realign else []
    prompts = load_eval_prompts(args.harmful, args.benign, args.limit)
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
        )
    console.print(eval_table(summary))
    console.print(literal(f"wrote {args.run_dir}/eval.json and the chart {summary['chart']}"))
    return 0


def cmd_pairs(args) -> int:
    import json as _json

    from rlaif.data import read_jsonl
    from rlaif.layout import judged_rounds, round_dir
    from rlaif.report import filter_judgements, judged_pair

    run_folder(args.run_dir)
    rounds = rounds_of(args.run_dir, args.round, "--round", judged_rounds(args.run_dir))
    records = []
    for k in rounds:
        path = round_dir(args.run_dir, k) / "judgements.jsonl"
        if path.is_file():
            records.extend(read_jsonl(path))
    kept = True if args.kept else False if args.dropped else None
    shown = filter_judgements(
        records, args.principle, kept, args.inconsistent, args.min_p, args.max_p, args.search
    )
    if args.json:
        for j in shown[: args.limit or None]:
            print(_json.dumps(j))
        return 0
    for j in shown[: args.limit or None]:
        console.print(judged_pair(j))
    console.print(literal(f"{len(shown)} of {len(records)} judged pairs match"))
    if args.inconsistent and records and all(j.get("mode") == "pointwise" for j in records):
        console.print(
            "these pairs were judged in pointwise mode: each response is scored alone, so there are no two "
            "orders to disagree (judge.mode = 'logprob' or 'rationale' reads both orders)",
            style="dim",
        )
    return 0


def cmd_revisions(args) -> int:
    import json as _json

    from rlaif.data import read_jsonl
    from rlaif.layout import revised_rounds, round_dir
    from rlaif.report import revision_panel

    run_folder(args.run_dir)
    revised = revised_rounds(args.run_dir)
    rounds = rounds_of(args.run_dir, args.round, "--round", revised)
    records = [x for k in rounds for x in read_jsonl(round_dir(args.run_dir, k) / "revisions.jsonl")]
    shown = [
        x
        for x in records
        if (args.principle is None or any(p["principle"] == args.principle for p in x["passes"]))
        and (not args.kept or x["final"] is not None)
        and (not args.dropped or any(not p["kept"] for p in x["passes"]))
    ][: args.limit or None]
    if args.json:
        for x in shown:
            print(_json.dumps(x))
        return 0
    for x in shown:
        console.print(revision_panel(x))
    if not revised:
        console.print(literal(f"{args.run_dir}: no round ran the critique stage yet", "yellow"))
    console.print(literal(f"{len(shown)} of {len(records)} critique-revision records shown"))
    return 0


def cmd_merge(args) -> int:
    """Write the full weights of rounds kept as adapters (merge.defer): round_<k>/model."""
    from rlaif.layout import completed_rounds, round_dir, round_model
    from rlaif.lora import is_lora, load_merged
    from rlaif.models import load_tokenizer, save_model

    run_folder(args.run_dir)
    done = completed_rounds(args.run_dir)
    rounds = rounds_of(args.run_dir, args.round, "--round", done) if args.round else done[-1:]
    if not rounds:
        raise DataError(f"{args.run_dir}: no complete round to merge")
    for k in rounds:
        model = round_model(args.run_dir, k)
        target = round_dir(args.run_dir, k) / "model"
        if not is_lora(model):
            console.print(literal(f"round {k}: already full weights: {str(model)}"))
            continue
        if not target.is_symlink() and (target / "config.json").is_file():  # a link is replaced, never used
            console.print(literal(f"round {k}: merged before: {str(target)}"))
            continue
        save_model(load_merged(model, "cpu", "float32"), load_tokenizer(model), target)
        console.print(literal(f"round {k}: merged {str(model)} into {str(target)}"))
    return 0


def model_ref(text: str) -> str:
    """A model given as a path, hub id or the embedded name, or as RUN_DIR:K for round K of a run."""
    from pathlib import Path

    from rlaif.layout import round_model
    from rlaif.models import resolve_model

    run, sep, k = text.rpartition(":")
    if sep and k.isdigit() and (Path(run) / "config.toml").is_file():
        return round_model(run, int(k))
    return resolve_model(text)


def cmd_compare(args) -> int:
    from rich.table import Table

    from rlaif.config import apply_overrides, build_config
    from rlaif.data import load_prompts, write_json
    from rlaif.evaluate import compare_models
    from rlaif.models import pick_device

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


def train_from_file(args, section: str, load, train, count_key: str) -> int:
    """`rlaif train` and `rlaif sft`: train a LoRA adapter on a file alone, merge it, save the model; under
    torchrun or `accelerate launch` every process trains its share of each step and rank 0 writes."""
    import torch

    from rlaif.config import apply_overrides, build_config, load_config
    from rlaif.launch import init_process_group
    from rlaif.models import load_model, load_tokenizer, resolve_model, save_model
    from rlaif.trainer import merge

    rank, _ = init_process_group()  # torchrun / accelerate launch describe the group in the environment
    if args.config:
        cfg = getattr(load_config(args.config, args.set), section)
    else:
        cfg = getattr(build_config(apply_overrides({}, args.set)), section)
    path = resolve_model(args.model)
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    examples = load(args.data)
    tok = load_tokenizer(path)
    with progress_bars(remaining=True) as bar:
        progress = RichProgress(bar) if rank == 0 else None
        trained, metrics, _ = train(
            load_model(path, device), tok, examples, cfg, args.seed, args.out, progress
        )
    merged = merge(trained)
    if rank == 0:
        save_model(merged, tok, f"{args.out}/model")
        console.print(
            literal(
                f"trained on {metrics[count_key]} {count_key} in {metrics['steps']} steps (loss "
                f"{metrics['loss_first']:.3f} -> {metrics['loss_last']:.3f}); merged model: {args.out}/model"
            )
        )
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def cmd_train(args) -> int:
    from rlaif.data import load_preferences
    from rlaif.stages.train import train_preferences

    return train_from_file(args, "train", load_preferences, train_preferences, "pairs")


def cmd_sft(args) -> int:
    from rlaif.data import load_sft
    from rlaif.stages.sft import train_sft

    return train_from_file(args, "sft", load_sft, train_sft, "examples")


def cmd_rm(args) -> int:
    """`rlaif rm train` and `rlaif rm eval`: Bradley-Terry reward models (rlaif/reward.py)."""
    from rlaif.config import JudgeConfig, ModelConfig
    from rlaif.data import load_preferences, write_json
    from rlaif.models import ModelPool, pick_device
    from rlaif.report import judge_eval_table, length_split_table

    device = pick_device("auto")
    if args.action == "train":
        from rlaif.reward import train_frozen, train_lora

        pairs = []
        for source in args.pairs:
            pairs.extend(load_preferences(source))
        if args.principle_conditioned:
            from rlaif.principles import load_constitution
            from rlaif.stages.reward_model import principle_text

            c = load_constitution(args.constitution)
            missing = sum("principle" not in p for p in pairs)
            if missing:
                raise DataError(
                    f"--principle-conditioned: {missing} pairs carry no principle (a run's preferences.jsonl does)"
                )
            pairs = [{**p, "principle_text": principle_text(c, p["principle"])} for p in pairs]
        pool = ModelPool(ModelConfig(), device)
        common = dict(
            sources=args.pairs,
            max_length=args.max_length,
            margin=args.margin,
            centring=args.centring,
            seed=args.seed,
            principle_conditioned=args.principle_conditioned,
        )
        if args.mode == "conditioned":
            from rlaif.instructable import train_conditioned
            from rlaif.principles import load_constitution

            if len(args.kinds) != len(args.pairs):
                raise DataError(
                    "rlaif rm train --mode conditioned needs one --kinds entry per --pairs file "
                    f"(got {len(args.pairs)} files, {len(args.kinds)} kinds)"
                )
            c = load_constitution(args.constitution)
            with progress_bars() as bar:
                spec = train_conditioned(
                    [(load_preferences(s), k) for s, k in zip(args.pairs, args.kinds, strict=True)],
                    args.model,
                    args.out,
                    ModelPool(ModelConfig(), device),
                    c,
                    sources=[f"{s} ({k})" for s, k in zip(args.pairs, args.kinds, strict=True)],
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
        with progress_bars() as bar:
            if args.mode == "lora":
                from rlaif.trainer import LoopConfig

                loop = LoopConfig(
                    epochs=args.epochs,
                    learning_rate=args.learning_rate,
                    batch_size=args.batch_size,
                    max_length=args.max_length,
                    lora_r=args.lora_r,
                    lora_alpha=2 * args.lora_r,
                )
                spec = train_lora(
                    pairs, args.model, args.out, pool, loop, progress=RichProgress(bar), **common
                )
            else:
                spec = train_frozen(pairs, args.model, args.out, pool, progress=RichProgress(bar), **common)
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
            console.print(
                literal(
                    f"LoRA reward model on {f['pairs']} pairs: loss {f['loss_first']:.3f} -> {f['loss_last']:.3f}, "
                    f"training accuracy {f['train_accuracy']:.1%}, {f['seconds']:.0f} s; wrote {args.out}"
                )
            )
        else:
            cv = (
                f"cross-validated accuracy {max(f['cv_accuracy'].values()):.1%}"
                if f["cv_accuracy"]
                else "not cross-validated: fewer than 10 pairs"
            )
            console.print(
                literal(
                    f"reward head on {f['pairs']} pairs: L2 {f['l2']:g} ({cv}), training accuracy "
                    f"{f['train_accuracy']:.1%}, {f['seconds']:.0f} s; wrote {args.out}"
                )
            )
        return 0
    from rlaif.judge_eval import evaluate, load_labelled
    from rlaif.principles import load_constitution
    from rlaif.reward import RewardJudge, RewardModel, accuracy_report

    pairs = load_labelled(args.data)[: args.limit or None]
    constitution = load_constitution(args.constitution)
    if args.kind and not any(p.kind == args.kind for p in constitution.principles):
        raise DataError(
            f"--kind {args.kind}: no principle of that kind in the constitution {args.constitution!r}"
        )
    # features cached on disk: every head on the same body, and a rerun, reads them again for free
    rm = RewardModel(args.model, ModelPool(ModelConfig(), device), cache=True)
    judge = RewardJudge(rm, JudgeConfig(mode="reward", reward_model=args.model), args.model)
    with progress_bars() as bar:
        result = evaluate(pairs, judge, constitution, 0, RichProgress(bar), kind=args.kind or None)
    rc = [v["score_x"] for v in result["verdicts"]]
    rr = [v["score_y"] for v in result["verdicts"]]
    labelled = [{"chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    result["lengths"] = accuracy_report(labelled, rc, rr)
    result["settings"] = {
        "data": args.data,
        "reward_model": args.model,
        "pairs": len(pairs),
        "mode": "reward",
        "kind": args.kind or None,
    }
    write_json(args.out, result)
    console.print(judge_eval_table(result))
    console.print(length_split_table(result["lengths"]))
    console.print(literal(f"wrote {args.out}"))
    return 0


def cmd_prompt_classifier(args) -> int:
    """`rlaif prompt-classifier train` / `eval`: which prompts are harmful requests (rlaif/applicability.py)."""
    from rlaif.applicability import PromptClassifier, accuracy, prompts_of, train_classifier
    from rlaif.config import ModelConfig
    from rlaif.data import write_json
    from rlaif.judge_eval import wilson
    from rlaif.models import ModelPool, pick_device

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


EVALUATOR_HELP = (
    "a reward model (folder from `rlaif rm train`, or a shipped one: smollm2-135m-harmless) judges instead of "
    "the prompted judge"
)


def evaluator_overrides(evaluator: str | None) -> list[str]:
    """--evaluator as config overrides: the judge becomes that reward model."""
    import json

    if not evaluator:
        return []
    from rlaif.reward import resolve_reward_model

    resolve_reward_model(evaluator)  # a wrong name fails now, with the shipped names
    return ["judge.mode=reward", f"judge.reward_model={json.dumps(evaluator)}"]


def cmd_rm_checked(args) -> int:
    if args.action == "eval":
        from rlaif.reward import resolve_reward_model

        resolve_reward_model(args.model)  # a wrong name fails now, before the data is read
    return cmd_rm(args)


DATA_HELP = {
    "train": "TRL-format preference JSONL or a datasets folder",
    "sft": "TRL SFT data: JSONL of prompt/completion or messages records, or a datasets folder",
}


def _number(kind, low, strict, what):
    def parse(text: str):
        import math

        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its message
    return parse


count = _number(int, 0, False, "a whole number >= 0")
positive = _number(int, 0, True, "a whole number >= 1")
finite = _number(float, -math.inf, False, "a finite number")
non_negative = _number(float, 0.0, False, "a finite number >= 0")


def build_parser() -> argparse.ArgumentParser:
    from rlaif.principles import CONSTITUTION_DIR, PRINCIPLES_DIR

    parser = argparse.ArgumentParser(
        prog="rlaif", description="Constitutional self-alignment (RLAIF) of language models."
    )
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser(
        "init", help="make a run folder: the demo's config and prompts, your own copy of the principles"
    )
    p.add_argument("run_dir", help="a new (or empty) folder")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("run", help="run (or resume) self-alignment rounds of a run folder")
    p.add_argument("run_dir", help="folder holding config.toml, e.g. runs/demo")
    p.add_argument("--rounds", type=int, default=2, help="rounds to complete in total (default 2)")
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="show the rounds of a run and some judged pairs")
    p.add_argument("run_dir")
    p.add_argument("--examples", type=count, default=3, help="judged pairs to show (default 3)")
    p.set_defaults(func=cmd_report)

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
        "export", help="export a run's preference pairs in the TRL format (JSONL or a dataset)"
    )
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="a .jsonl file, or a folder for --format hf")
    p.add_argument("--format", choices=["jsonl", "hf"], default="jsonl", help="hf = datasets save_to_disk")
    p.add_argument("--rounds", default="", help="comma-separated rounds (default: every completed round)")
    p.add_argument("--conversational", action="store_true", help="chat messages instead of strings")
    p.add_argument("--force", action="store_true", help="replace a previous export at --out (nothing else)")
    p.set_defaults(func=cmd_export)

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
    p.add_argument("--judge-model", help="judge for every round (default: round 0's model)")
    p.add_argument("--evaluator", help=EVALUATOR_HELP)
    p.add_argument("--realign", default="", help="DeRa lambdas for the last round, e.g. 0,0.5,1,2")
    p.add_argument("--best-of", type=count, default=0, help="add round 0 best-of-N as a baseline row")
    p.add_argument("--max-new-tokens", type=positive, default=96)
    p.add_argument("--temperature", type=non_negative, default=1.0, help="1.0 keeps the KL estimate unbiased")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key"
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("pairs", help="browse judged pairs with filters")
    p.add_argument("run_dir")
    p.add_argument("--round", default="", help="comma-separated rounds (default: all)")
    p.add_argument("--principle", help="principle id")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--kept", action="store_true", help="only pairs kept for training")
    g.add_argument("--dropped", action="store_true", help="only dropped pairs")
    p.add_argument("--inconsistent", action="store_true", help="only pairs whose two orders disagreed")
    p.add_argument("--min-p", type=finite, help="confidence at least (max of P(x), 1 - P(x))")
    p.add_argument("--max-p", type=finite, help="confidence at most")
    p.add_argument("--search", help="text in the prompt or a response")
    p.add_argument("--limit", type=count, default=20, help="pairs to show (0 = all)")
    p.add_argument("--json", action="store_true", help="one JSON record per line, for scripts")
    p.set_defaults(func=cmd_pairs)

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

    p = sub.add_parser("revisions", help="browse the critique stage's critiques and revisions")
    p.add_argument("run_dir")
    p.add_argument("--round", default="", help="comma-separated rounds (default: all)")
    p.add_argument("--principle", help="only records with a pass under this principle id")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--kept", action="store_true", help="only prompts with a kept revision")
    g.add_argument("--dropped", action="store_true", help="only prompts with a dropped revision")
    p.add_argument("--limit", type=count, default=10, help="records to show (0 = all)")
    p.add_argument("--json", action="store_true", help="one JSON record per line, for scripts")
    p.set_defaults(func=cmd_revisions)

    p = sub.add_parser("merge", help="write the full weights of rounds kept as adapters (merge.defer)")
    p.add_argument("run_dir")
    p.add_argument("--round", default="", help="comma-separated rounds (default: the last complete one)")
    p.set_defaults(func=cmd_merge)

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

    p = sub.add_parser("principles", help="show the principles of a constitution, or check all files")
    p.add_argument("action", nargs="?", choices=["show", "check"], default="show")
    p.add_argument(
        "files",
        nargs="*",
        help="check: constitution files (checked with the principles they name), principle files or folders "
        "(default: --constitution when given, else every shipped file)",
    )
    p.add_argument("--constitution", default="default", help="name or path (default: default)")
    p.add_argument(
        "--mode",
        choices=["pointwise", "logprob", "rationale"],
        default="pointwise",
        help="check: the judge mode the principles must serve (pointwise needs each principle's check)",
    )
    p.add_argument(
        "--no-critique",
        action="store_true",
        help="check: do not ask each principle for critique and revision requests (runs without the critique stage)",
    )
    p.add_argument("--principles-dir", default=str(PRINCIPLES_DIR), help=argparse.SUPPRESS)
    p.add_argument("--constitution-dir", default=str(CONSTITUTION_DIR), help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_principles)
    return parser


def main(argv: list[str] | None = None) -> int:
    from rlaif.config import ConfigError
    from rlaif.data import DataError
    from rlaif.models import ModelError
    from rlaif.principles import PrincipleError
    from rlaif.rounds import RunBusy, StageError

    args = build_parser().parse_args(argv)
    if args.verb == "run" and args.rounds < 1:
        error("--rounds must be >= 1")
        return 2
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _terminated)  # `kill` gets the same resume hint as Ctrl-C
    try:
        return args.func(args)
    except PrincipleError as e:
        print_problems(e.problems)
        return 2
    except StageError as e:
        error(e)
        return 1
    except (ConfigError, DataError, ModelError, RunBusy) as e:
        error(e)
        return 2
    except PermissionError as e:
        error(f"{e.filename}: permission denied ({e.strerror}); rlaif needs to write there")
        return 2
    except BrokenPipeError:
        # the reader went away (`rlaif pairs --json | head`): stop quietly, as a tool killed by SIGPIPE
        # would; stdout goes to /dev/null so the interpreter's final flush cannot raise again
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        err.print("interrupted; run the same command again to resume", style="yellow")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminated(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
