"""`graddoctor lab`: list the experiments, or run one (figures, table and a measured conclusion)."""
from __future__ import annotations

import argparse

from rich import box
from rich.markup import escape
from rich.table import Table

from ..errors import GradDoctorError, unknown
from .common import console
from .runs import add_store_arg

DEFAULT_OUT = "graddoctor-lab"
EXAMPLE = f"""examples:
  graddoctor lab list
  graddoctor lab run depth --quick
  graddoctor lab run all --workers 2 --out docs/lab --store lab.db --resume

Each experiment trains a small grid of networks on the bundled digits data with the probe on,
stores every run (--store), writes OUT/NAME.png and OUT/NAME.md (default OUT: {DEFAULT_OUT}/)
and prints the table and a conclusion computed from the measurements. --quick runs a smaller
grid (seconds); --resume reuses the finished runs of an earlier, identical call.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="run the experiments behind each claim", epilog=EXAMPLE,
                       description="The lab: every claim about vanishing and exploding gradients as an "
                                   "experiment you can run, see and rerun.")
    inner = p.add_subparsers(dest="lab_command", metavar="SUBCOMMAND")
    ls = inner.add_parser("list", help="the experiments and their claims", epilog=EXAMPLE,
                          description="List the experiments: name, runs (full / quick), claim.")
    ls.set_defaults(run=run_list)
    r = inner.add_parser("run", help="run an experiment", epilog=EXAMPLE,
                         description="Run one experiment (or all), store its runs, write its figure "
                                     "and table, print its conclusion.")
    r.add_argument("name", metavar="NAME", help="an experiment from `graddoctor lab list`, or 'all'")
    r.add_argument("--quick", action="store_true", help="the small grid (the test suite's size)")
    r.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"figures and tables (default: {DEFAULT_OUT})")
    add_store_arg(r)
    r.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (default: 1)")
    r.add_argument("--resume", action="store_true", help="reuse finished runs of the same grid from --store")
    r.add_argument("--seed", type=int, default=0, help="weights and data order (default: 0)")
    r.set_defaults(run=run_one)
    p.set_defaults(run=lambda args: (p.print_help(), 2)[1])


def run_list(args: argparse.Namespace) -> int:
    from ..lab.experiments import EXPERIMENTS

    t = Table("name", "runs", "claim", "source", box=box.SIMPLE_HEAD, title="graddoctor lab experiments")
    for e in EXPERIMENTS.values():
        t.add_row(e.name, f"{len(e.jobs())} / {len(e.jobs(quick=True))}", escape(e.claim), escape(e.source))
    t.add_row("rnn", "6 / 4", "a tanh RNN's gradient vanishes through time; an LSTM carries it",
              "Bengio, Simard & Frasconi 1994; Hochreiter & Schmidhuber 1997")
    console.print(t)
    return 0


def run_rnn(args: argparse.Namespace) -> bool:
    """The `rnn` experiment (the adding problem, not a NetSpec grid); True when the claim holds."""
    from pathlib import Path

    from ..lab import rnn

    runs, conclusion = rnn.run(args.store, quick=args.quick, seed=args.seed)
    head, rows = rnn.table(runs)
    t = Table(*head, box=box.SIMPLE_HEAD, title="rnn: vanishing through time, tanh RNN vs LSTM",
              title_justify="left")
    for row in rows:
        t.add_row(*map(escape, row))
    console.print(t)
    console.print(conclusion.text.replace("**", ""), markup=False, highlight=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rnn.md").write_text(rnn.markdown(runs, conclusion))
    console.print(f"wrote {out / 'rnn.md'}; {len(runs)} runs in {args.store}", markup=False, highlight=False,
                  soft_wrap=True)
    return conclusion.holds


def print_lab(lab) -> None:
    """The experiment's table and conclusion on the terminal."""
    from ..lab.render import table

    head, rows = table(lab)
    t = Table(*head, box=box.SIMPLE_HEAD, title=f"{lab.experiment.name}: {escape(lab.experiment.claim)}",
              title_justify="left")
    for row in rows:
        t.add_row(*map(escape, row))
    console.print(t)
    console.print(lab.conclusion.text.replace("**", ""), markup=False, highlight=False)


def run_one(args: argparse.Namespace) -> int:
    from ..lab import render
    from ..lab.api import run_experiment
    from ..lab.experiments import EXPERIMENTS

    if args.workers < 1:
        raise GradDoctorError(f"--workers must be at least 1, got {args.workers}")
    if args.name not in (*EXPERIMENTS, "rnn", "all"):
        raise unknown("experiment", args.name, (*EXPERIMENTS, "rnn", "all"))
    names = [*EXPERIMENTS, "rnn"] if args.name == "all" else [args.name]
    failed = []
    for name in names:
        if name == "rnn":
            if not run_rnn(args):
                failed.append(name)
            continue
        lab = run_experiment(name, args.store, quick=args.quick, workers=args.workers, resume=args.resume,
                             seed=args.seed)
        print_lab(lab)
        paths = render.write(lab, args.out)
        reused = sum(r.reused for r in lab.results)
        console.print(f"wrote {', '.join(str(p) for p in paths)}; {len(lab.results)} runs in {args.store}"
                      + (f" ({reused} reused)" if reused else ""), markup=False, highlight=False, soft_wrap=True)
        if not lab.conclusion.holds:
            failed.append(name)
    if failed:
        console.print(f"not supported by these measurements: {', '.join(failed)}", markup=False, highlight=False)
    return 0
