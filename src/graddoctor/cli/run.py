"""`graddoctor run [OPTIONS] -- python train.py ARGS...`: watch an unmodified training script.

The script runs in this process (integrations/script.py), exactly as python would run it; the
models its optimizers train are found and watched (integrations/autowatch.py) and recorded into
the run store as they train. When it ends — normally, by an exception or by Ctrl-C — each
model's run is finished in the store, its diagnosis printed and its HTML report written.
graddoctor writes only to stderr: the script's stdout is left exactly as it would be, and the
exit status is the script's.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

import torch
from rich.console import Console

from ..errors import GradDoctorError
from ..integrations.recording import LiveRun
from ..probe.distributed import is_main
from ..probe.probe import STATS
from ..store import DEFAULT_PATH, RunStore
from .runs import add_wide_arg

EXAMPLE = """examples:
  graddoctor run -- python examples/train_mlp.py
  graddoctor run --every 5 --report mlp.html -- python examples/train_mlp.py --epochs 2
  graddoctor run --stats norms -- python -m mypackage.train --config big.yaml

Every model that a torch optimizer trains is watched (several: each, named by its class).
The script's output and exit status are its own; graddoctor prints to stderr at the end:
per model the diagnosis, the run id in --store and the report's path. Also after an
exception in the script or Ctrl-C (the run is stored as failed / interrupted).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run your training script unchanged and diagnose what it trains",
                       epilog=EXAMPLE,
                       description="Run `python script.py ARGS` (or `python -m module ARGS`) in this process, "
                                   "watch every model its optimizers train, and diagnose each at the end.")
    p.add_argument("--every", type=int, default=10, help="record every k-th optimizer step (default 10; 1: all)")
    p.add_argument("--stats", default="full", choices=STATS,
                   help="full: error signals and activations too (default); norms: parameter norms only")
    p.add_argument("--store", default=str(DEFAULT_PATH), metavar="PATH",
                   help=f"run store to record into (default: {DEFAULT_PATH})")
    p.add_argument("--report", metavar="FILE.html",
                   help="the HTML report (default: report-RUN.html beside the store; several models: "
                        "FILE-NAME.html)")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    add_wide_arg(p)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- python script.py ARGS... (or python -m module)")
    p.set_defaults(run=run)


class _Recording:
    """Each watched model's LiveRun in the store, started at its first optimizer step."""

    def __init__(self, store: RunStore, command: str, every: int) -> None:
        self.store, self.command, self.every = store, command, every
        self.runs: dict[int, LiveRun] = {}  # id(Watched) -> its run

    def start(self, w) -> None:
        """Start the model's run (kind 'run')."""
        from ..nets import count_parameters

        spec = {"model": type(w.probe.model).__name__, "name": w.name, "parameters": count_parameters(w.model),
                "optimizer": type(w.optimizer).__name__}
        config = {"command": self.command, "every": self.every, "stats": w.probe.stats, "first_step": w.first_step}
        self.runs[id(w)] = LiveRun(self.store, spec, config, w.probe.trace, kind="run")

    def step(self, w, loss: torch.Tensor | None) -> None:
        """The model's step `w.steps - 1` ended with `loss`."""
        self.runs[id(w)].step(w.steps - 1, loss)


def _shown(path: Path, base: Path) -> str:
    """A path as the user would type it: relative to the directory graddoctor started in, when inside it."""
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return str(path)


def _report_path(args: argparse.Namespace, store: Path, run_id: int, name: str, several: bool) -> Path:
    if args.report is None:
        return store.parent / f"report-{run_id}.html"
    out = Path(args.report).absolute()
    return out.with_name(f"{out.stem}-{name.replace('#', '-')}{out.suffix or '.html'}") if several else out


def _conclude(watcher, recording: _Recording, outcome, args, store_path: Path, console: Console) -> None:
    """Per watched model: diagnose, finish its stored run, print, write the report."""
    from ..diagnose.api import diagnose
    from ..report.terminal import print_diagnosis

    for text in watcher.notes:
        console.print(f"graddoctor: {text}", highlight=False, markup=False, soft_wrap=True)
    if not watcher.trained:
        console.print("graddoctor: no model was trained (no torch optimizer stepped), so there is nothing to "
                      "diagnose; graddoctor run watches the models whose parameters a torch.optim optimizer "
                      "updates", highlight=False, markup=False, soft_wrap=True)
        return
    several = len(watcher.trained) > 1
    for w in watcher.trained:
        trace = w.probe.trace
        start = f", recording from its step {w.first_step}" if w.first_step else ""
        console.rule(f"graddoctor: {w.name} (trained by {type(w.optimizer).__name__}): {w.steps} steps, "
                     f"{len(trace)} recorded (every {w.probe.every}){start}", style="bold")
        try:
            diagnosis, why = diagnose(trace), None
        except GradDoctorError as exc:
            diagnosis, why = None, str(exc)
        live = recording.runs[id(w)]
        run_id = live.finish(outcome.status, diagnosis)
        if diagnosis is None:
            console.print(f"no diagnosis: {why}", highlight=False, markup=False, soft_wrap=True)
        else:
            print_diagnosis(diagnosis, console, wide=args.wide)
        where = f"run {run_id} in {_shown(store_path, args.started_in)}"
        if not args.no_report and len(trace):
            try:
                out = live.report(_report_path(args, store_path, run_id, w.name, several))
                where += f"; report: {_shown(out, args.started_in)}"
            except GradDoctorError as exc:  # e.g. matplotlib missing: the run is stored all the same
                where += f"; no report ({exc})"
        console.print(f"graddoctor: {where}", highlight=False, markup=False, soft_wrap=True)


def run(args: argparse.Namespace) -> int:
    from ..integrations.autowatch import AutoWatch
    from ..integrations.script import parse_command, run_command

    cmd = parse_command(args.command)
    if args.every < 1:
        raise GradDoctorError(f"--every must be at least 1, got {args.every}")
    console = Console(stderr=True)
    args.started_in = Path.cwd()
    store_path = Path(args.store).absolute()  # before the script may chdir
    store = RunStore(store_path)  # a bad --store fails here, before the script runs
    command = shlex.join([cmd.interpreter or "python", *(["-m"] if cmd.module else []), cmd.target, *cmd.args])
    recording = _Recording(store, command, args.every)
    watcher = AutoWatch(every=args.every, stats=args.stats, on_start=recording.start, on_step=recording.step)
    named = shutil.which(cmd.interpreter) if cmd.interpreter else None
    if named and os.path.realpath(named) != os.path.realpath(sys.executable):  # said at the end, with the rest
        watcher.note(f"the script ran in graddoctor's Python, {sys.executable}, not in {named}")
    with store:
        watcher.__enter__()
        outcome = None
        try:
            outcome = run_command(cmd)
        finally:
            exc = outcome.exc if outcome is not None else sys.exc_info()[1]
            watcher.__exit__(type(exc) if exc is not None else None, exc, None)
        sys.stdout.flush()
        if is_main() and all(w.rank == 0 for w in watcher.watched):  # one writer: rank 0
            _conclude(watcher, recording, outcome, args, store_path, console)
    return outcome.code
