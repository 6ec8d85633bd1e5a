"""`rlaif review`: people confirm or flip the judge's verdicts, in the terminal or through a labelling tool.

rlaif review runs/demo --round 1
rlaif review runs/demo --round 1 --export r1.json --format label-studio
rlaif review runs/demo --round 1 --import export.json --format label-studio
"""

from __future__ import annotations

import sys

from rlaif.cli.common import console, count, run_folder
from rlaif.config import load_config
from rlaif.config.review import REVIEW_ORDERS
from rlaif.data import DataError
from rlaif.layout import preference_rounds, round_dir
from rlaif.report import judged_under, require_principle
from rlaif.review.exchange import FORMATS, export_pairs, import_labels
from rlaif.review.labels import (
    LABELS_FILE,
    LabelStore,
    ReviewLock,
    default_reviewer,
    review_order,
    review_pairs,
)
from rlaif.untrusted import join


def _round(args) -> int:
    present = preference_rounds(args.run_dir)
    if not present:
        raise DataError(
            f"{args.run_dir}: no round has judged pairs yet (run: rlaif run {args.run_dir} --set round.review=pause)"
        )
    if args.round is None:
        return present[-1]
    if args.round not in present:
        raise DataError(
            f"{args.run_dir}: round {args.round} has no judged pairs (--round; rounds with pairs: "
            f"{', '.join(map(str, present))})"
        )
    return args.round


def cmd_review(args) -> int:

    run_folder(args.run_dir)
    config = load_config(args.run_dir)
    k = _round(args)
    rdir = round_dir(args.run_dir, k)
    reviewer = default_reviewer(args.reviewer or config.review.reviewer)
    pairs = review_pairs(rdir)
    if args.principle:
        require_principle(pairs, args.principle, f"no pair of round {k}")
        pairs = [p for p in pairs if judged_under(p, args.principle)]
    pairs = review_order(pairs, args.order or config.review.order, seed=config.seed)
    if args.limit:
        pairs = pairs[: args.limit]
    if (args.export or args.import_) and not args.format:
        raise DataError("--export and --import need --format (" + " | ".join(FORMATS) + ")")
    if args.export:
        with ReviewLock(rdir):
            labels = LabelStore(rdir, reviewer).labels
        n = export_pairs(pairs, labels, args.export, args.format)
        console.print(join(f"exported {n} pairs of round {k} to ", args.export, f" ({args.format})"))
        if args.format == "label-studio":
            console.print(
                join(
                    "labelling config: ",
                    str(args.export).rsplit(".", 1)[0] + ".xml",
                    " (paste it into the project)",
                )
            )
        return 0
    if args.import_:
        with ReviewLock(rdir):
            store = LabelStore(rdir, reviewer)
            records = import_labels(args.import_, args.format, review_pairs(rdir), reviewer)
            store.merge(records)
        console.print(join(f"imported {len(records)} labels into ", rdir / LABELS_FILE))
        return 0
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise DataError(
            "rlaif review needs an interactive terminal (stdin and stdout are not one here). To label "
            "elsewhere: rlaif review RUN --export F --format label-studio|argilla|jsonl, then --import F"
        )
    from rlaif.review.app import ReviewApp  # textual loads only for the app

    with ReviewLock(rdir):
        store = LabelStore(rdir, reviewer)
        app = ReviewApp(pairs, store, title=f"{args.run_dir} · round {k} · reviewer {reviewer}")
        app.run()
    ids = {p["pair_id"] for p in pairs}
    done = sum(pid in ids for pid in store.labels)
    console.print(join(f"{done}/{len(pairs)} pairs of round {k} labelled; saved in ", rdir / LABELS_FILE))
    console.print(
        join("continue the run: rlaif run ", args.run_dir, "  (the round trains on the corrected pairs)")
    )
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "review",
        help="confirm or flip the judge's verdicts (terminal app), or export / import them for a labelling tool",
    )
    p.add_argument("run_dir")
    p.add_argument("--round", type=int, help="the round to review (default: the last with judged pairs)")
    p.add_argument(
        "--principle", help="only pairs judged under this principle id, or a principle of this kind"
    )
    p.add_argument(
        "--order",
        choices=REVIEW_ORDERS,
        help="uncertain (default: the judge's least sure first), disagreement, random, file",
    )
    p.add_argument("--limit", type=count, default=0, help="review at most this many pairs (0 = all)")
    p.add_argument("--reviewer", help="name written with each label (default: review.reviewer, else $USER)")
    p.add_argument("--export", metavar="F", help="write the pairs, with the judge's verdict pre-filled, to F")
    p.add_argument(
        "--import", dest="import_", metavar="F", help="read labels made in a labelling tool from F"
    )
    p.add_argument("--format", choices=FORMATS, help="file format of --export / --import")
    p.set_defaults(func=cmd_review)
