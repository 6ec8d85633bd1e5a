"""The `rlaif` command: thin verbs over library functions, one module per group of verbs, each with its parsers
next to its handlers. Only this package prints.

    rlaif run runs/demo --rounds 2        # generate -> judge -> DPO -> merge, twice (resumes if interrupted)
    rlaif report runs/demo                # one row per round, then judged pairs side by side
    rlaif principles                      # the constitution's principles
    rlaif principles check [FILES]        # validate principle and constitution files (exit 2 on problems)

Bad input exits with code 2 and a message naming the file and key or line; no traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from rlaif.cli import feedback, judging, principles, review, reward, runs, training
from rlaif.cli.common import err, error, print_problems
from rlaif.config import ConfigError
from rlaif.data import DataError, FolderBusy
from rlaif.models import ModelError
from rlaif.principles import PrincipleError
from rlaif.rounds import StageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlaif", description="Constitutional self-alignment (RLAIF) of language models."
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    for group in (runs, review, feedback, judging, training, reward, principles):
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:

    args = build_parser().parse_args(argv)
    if args.verb == "run" and args.rounds < 1:
        error("--rounds must be >= 1")
        return 2
    signals = (signal.SIGINT, signal.SIGTERM)  # `kill` gets the same resume hint as Ctrl-C
    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, _interrupted)
    try:
        return args.func(args)
    except PrincipleError as e:
        print_problems(e.problems)
        return 2
    except StageError as e:
        error(e)
        return 1
    except (ConfigError, DataError, ModelError, FolderBusy) as e:
        error(e)
        return 2
    except PermissionError as e:
        error(f"{e.filename}: permission denied ({e.strerror}); rlaif needs to write there")
        return 2
    except BrokenPipeError:
        # the reader went away (`rlaif pairs --json | head`): stop quietly, as a tool killed by SIGPIPE
        # would; stdout goes to /dev/null so the interpreter's final flush cannot raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        err.print("interrupted; run the same command again to resume", style="yellow")
        return 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _interrupted(signum, frame):
    """Stop the verb with KeyboardInterrupt, except in the middle of an import (stages import torch, peft and
    transformers lazily): an exception raised there can come out as another error (Python wraps one raised in a
    class's `__set_name__` in RuntimeError) or leave the interpreter flagged to kill itself with SIGINT on a
    clean exit. There the signal is sent again a moment later, until it lands outside the import."""
    f = frame
    while f is not None:
        if f.f_code.co_filename.startswith("<frozen importlib"):
            threading.Timer(0.05, _resend, (signum,)).start()
            return
        f = f.f_back
    raise KeyboardInterrupt


def _resend(signum: int) -> None:
    if signal.getsignal(signum) is _interrupted:  # the verb has not finished meanwhile
        os.kill(os.getpid(), signum)
