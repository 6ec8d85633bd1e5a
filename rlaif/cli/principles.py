"""Show or check principle and constitution files.

rlaif principles check my-run/constitution/default.toml
"""

from __future__ import annotations

import argparse

from rlaif.cli.common import console, error, print_problems
from rlaif.principle_checks import check_paths
from rlaif.principles import CONSTITUTION_DIR, PRINCIPLES_DIR, constitution_path, load_constitution
from rlaif.report import principles_table


def cmd_principles(args) -> int:

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


def add_parsers(sub) -> None:
    """The parsers of this module's verbs, on the `rlaif` command's subparsers."""

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
