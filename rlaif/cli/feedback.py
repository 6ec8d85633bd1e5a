"""`rlaif feedback`: a log of how people used the model, turned into training data (rlaif/feedback.py).

rlaif feedback import interactions.jsonl --run runs/demo
rlaif feedback simulate --pairs ../shared/data/hh-harmless-train.jsonl --out sim-log.jsonl
"""

from __future__ import annotations

from rlaif.cli.common import console, count, run_folder
from rlaif.config import load_config
from rlaif.data import DataError, load_preferences, real_dir, write_jsonl
from rlaif.feedback import import_log, simulate_log
from rlaif.untrusted import join


def cmd_import(args) -> int:
    run = run_folder(args.run)
    desired = load_config(run).rlhb.desired
    out = real_dir(run / "feedback")
    n = import_log(args.log, out, desired=desired)
    console.print(
        join(
            f"{n['interactions']} interactions: {n['kto']} unpaired examples ({n['desirable']} desirable), "
            f"{n['pairs']} implied pairs, {n['behaviour']} behaviour texts, in ",
            out,
        )
    )
    console.print(
        join(
            "train on them: rlaif run ",
            args.run,
            " --set dpo.loss=kto --set 'data.offline=[\"feedback/kto.jsonl\"]' --set data.offline_share=1",
        )
    )
    return 0


def cmd_simulate(args) -> int:
    pairs = load_preferences(args.pairs)
    if args.limit:
        pairs = pairs[: args.limit]
    if not pairs:
        raise DataError(f"{args.pairs}: no pairs")
    n = write_jsonl(args.out, simulate_log(pairs, args.seed))
    console.print(
        join(f"wrote {n} SIMULATED interactions (from {len(pairs)} preference pairs) to ", args.out)
    )
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("feedback", help="turn a log of how people used the model into training data")
    fsub = p.add_subparsers(dest="feedback_verb", required=True)
    q = fsub.add_parser(
        "import",
        help="a behaviour log -> unpaired (KTO) examples, implied pairs and behaviour texts in RUN/feedback/",
    )
    q.add_argument("log", help="JSON Lines of interactions (schema: docs/feedback.md)")
    q.add_argument("--run", required=True, help="the run folder to write feedback/ into")
    q.set_defaults(func=cmd_import)
    q = fsub.add_parser(
        "simulate", help="a SIMULATED behaviour log built from preference pairs (for measurements)"
    )
    q.add_argument("--pairs", required=True, help="TRL-format preference pairs")
    q.add_argument("--out", required=True, help="the log to write (JSON Lines)")
    q.add_argument("--limit", type=count, default=0, help="use the first N pairs (0 = all)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_simulate)
