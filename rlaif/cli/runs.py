"""Verbs over a run folder: init, run, report, pairs, revisions, merge, export.

rlaif init my-run && rlaif run my-run --rounds 2 && rlaif report my-run
"""

from __future__ import annotations

import json as _json

from rlaif.cli.common import RichProgress, console, count, finite, progress_bars, rounds_of, run_folder
from rlaif.data import DataError, export_preferences, read_jsonl
from rlaif.layout import completed_rounds, judged_rounds, revised_rounds, round_dir, round_model
from rlaif.lora import is_lora
from rlaif.models import load_merged, load_tokenizer, save_model
from rlaif.report import filter_judgements, judged_pair, require_principle, revision_panel, run_report
from rlaif.rounds import run
from rlaif.shipped import init_run
from rlaif.stages import Paused
from rlaif.untrusted import join, literal


def cmd_init(args) -> int:

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


def cmd_run(args) -> int:

    try:
        with progress_bars(remaining=True) as bar:
            results = run(args.run_dir, args.rounds, args.set, RichProgress(bar))
    except Paused as e:  # round.review = "pause": waiting for people, on purpose
        console.print(literal(str(e), "yellow"), soft_wrap=True)
        return 0

    console.print(run_report(args.run_dir, examples=1))
    console.print(join((f"{len(results)} round(s) complete", "green"), " in ", args.run_dir))
    return 0


def cmd_report(args) -> int:

    run_folder(args.run_dir)
    console.print(run_report(args.run_dir, examples=args.examples))
    return 0


def cmd_pairs(args) -> int:

    run_folder(args.run_dir)
    rounds = rounds_of(args.run_dir, args.round, "--round", judged_rounds(args.run_dir))
    records = []
    for k in rounds:
        path = round_dir(args.run_dir, k) / "judgements.jsonl"
        if path.is_file():
            records.extend(read_jsonl(path))
    if args.principle and records:
        require_principle(records, args.principle, "no judged pair")
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


def cmd_export(args) -> int:

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


def add_parsers(sub) -> None:
    """The parsers of this module's verbs, on the `rlaif` command's subparsers."""
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

    p = sub.add_parser("pairs", help="browse judged pairs with filters")
    p.add_argument("run_dir")
    p.add_argument("--round", default="", help="comma-separated rounds (default: all)")
    p.add_argument(
        "--principle", help="a principle id, or a kind (harmlessness, helpfulness): the pairs it judged"
    )
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
