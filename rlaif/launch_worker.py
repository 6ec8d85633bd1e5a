"""One training process under the launcher: `python -m rlaif.launch_worker RUN --round K --stage NAME --model M`
(rlaif/launch.py builds the command). It opens the run, runs the stage and reports to the runner in EVENT lines.

It is the top of the import graph (it runs what rlaif/rounds.py runs), apart from rlaif/launch.py, which the
runner imports and which must not import the runner back.
"""

from __future__ import annotations

import argparse
import json
import sys

from rlaif.checks import ConfigError
from rlaif.config import load_config
from rlaif.data import DataError
from rlaif.launch import EVENT, TRAINING, LineProgress, close_process_group, init_process_group
from rlaif.layout import round_dir
from rlaif.models import ModelError
from rlaif.progress import SILENT
from rlaif.rounds import StageError, open_run, stage_errors, stage_module
from rlaif.stages import Round


def worker(argv: list[str]) -> int:

    p = argparse.ArgumentParser(prog="python -m rlaif.launch_worker")
    p.add_argument("run_dir")
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--stage", required=True, choices=TRAINING)
    p.add_argument("--model", required=True)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args(argv)

    rank, _ = init_process_group()
    progress = LineProgress() if rank == 0 else SILENT
    try:
        config = load_config(args.run_dir, args.set)
        state = open_run(args.run_dir, config, progress, args.set)
        rdir = round_dir(state.dir, args.round)
        r = Round(state, args.round, rdir, args.model, args.model)
        module = stage_module(args.stage)
        with stage_errors(args.stage, rdir, module.LOWER_ON_OOM):
            figures = module.run(r)
    except Exception as e:  # noqa: BLE001 - every failure goes to the runner as a message, then exit 1
        if not isinstance(e, StageError | ConfigError | DataError | ModelError):
            raise  # a bug: the traceback goes to the launch log
        print(EVENT + json.dumps({"event": "error", "message": str(e)}), flush=True)
        return 1
    if rank == 0:
        print(EVENT + json.dumps({"event": "figures", "figures": figures}), flush=True)
    close_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
