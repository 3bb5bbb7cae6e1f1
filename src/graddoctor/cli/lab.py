"""`graddoctor lab`: list the experiments, or run one (figures, table and a measured conclusion)."""
from __future__ import annotations

import argparse

from rich import box
from rich.markup import escape
from rich.table import Table

from ..errors import GradDoctorError, unknown
from ..lab.experiments import SEEDS
from .common import add_backend_args, console
from .runs import add_store_arg

DEFAULT_OUT = "graddoctor-lab"
EXAMPLE = f"""examples:
  graddoctor lab list
  graddoctor lab run depth --quick
  graddoctor lab run all --workers 2 --out docs/lab --store lab.db --resume
  graddoctor lab run init --quick --seeds 3,4,5
  graddoctor lab run all --backend ray --address ray://head:10001 --store lab.db

Each experiment trains a small grid of networks on the bundled digits data with the probe on,
once per seed (default: 0,1,2), stores every run (--store), writes OUT/NAME.png and OUT/NAME.md
(default OUT: {DEFAULT_OUT}/) and prints the table (each number as its range over the seeds) and a
conclusion computed from the measurements: a claim is supported only when it holds on every
seed. --quick runs shorter (seconds to a minute per experiment, the same seeds); --resume
reuses the finished runs of an earlier call with the same settings.
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
    add_backend_args(r)
    r.add_argument("--resume", action="store_true", help="reuse finished runs of the same grid from --store")
    r.add_argument("--seeds", type=_seeds, default=SEEDS, metavar="LIST",
                   help=f"comma-separated seeds: weights, data split and order (default: {','.join(map(str, SEEDS))})")
    r.set_defaults(run=run_one)
    p.set_defaults(run=lambda args: (p.print_help(), 2)[1])


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is repeated in {text!r}")
    return seeds


def run_list(args: argparse.Namespace) -> int:
    from ..lab import rnn
    from ..lab.experiments import EXPERIMENTS

    t = Table("name", "runs (full / quick)", "claim", "source", box=box.SIMPLE_HEAD,
              title=f"graddoctor lab experiments (each on seeds {', '.join(map(str, SEEDS))})")
    for e in EXPERIMENTS.values():
        t.add_row(e.name, f"{len(e.jobs())} / {len(e.jobs(quick=True))}", escape(e.claim), escape(e.source))
    t.add_row("rnn", f"{len(rnn.jobs())} / {len(rnn.jobs(quick=True))}", escape(rnn.CLAIM), escape(rnn.SOURCE))
    console.print(t)
    return 0


def _show(title: str, head: list[str], rows: list[list[str]], text: str) -> None:
    t = Table(*head, box=box.SIMPLE_HEAD, title=title, title_justify="left")
    for row in rows:
        t.add_row(*map(escape, row))
    console.print(t)
    console.print(text.replace("**", ""), markup=False, highlight=False)


def run_rnn(args: argparse.Namespace):
    """The `rnn` experiment (the adding problem, not a NetSpec grid): its conclusion and runs."""
    from pathlib import Path

    from ..lab import rnn

    runs, conclusion = rnn.run(args.store, quick=args.quick, seeds=args.seeds, workers=args.workers,
                               resume=args.resume, backend=args.backend, address=args.address)
    _show(f"rnn: {escape(rnn.CLAIM)}", *rnn.table(runs), conclusion.text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rnn.md").write_text(rnn.markdown(runs, conclusion, args.quick))
    reused = sum(r.reused for r in runs)
    console.print(f"wrote {out / 'rnn.md'}; {len(runs)} runs in {args.store}"
                  + (f" ({reused} reused)" if reused else ""), markup=False, highlight=False, soft_wrap=True)
    return conclusion, len(runs), reused, rnn.CLAIM, sum(r.seconds for r in runs)


def print_lab(lab) -> None:
    """The experiment's table and conclusion on the terminal."""
    from ..lab.render import table

    _show(f"{lab.experiment.name}: {escape(lab.experiment.claim)}", *table(lab), lab.conclusion.text)


def _backend_session(args: argparse.Namespace):
    """One Ray connection (or local instance) for every experiment of the call; nothing for the local pool."""
    from contextlib import nullcontext

    if args.backend != "ray":
        return nullcontext()
    from ..lab.ray_backend import session

    return session(args.address, args.workers)


def _run_named(name: str, args: argparse.Namespace) -> tuple:
    """Run one experiment and print it: (name, claim, holds, held on, seeds, runs, reused, training seconds)."""
    from ..lab import render
    from ..lab.api import run_experiment

    if name == "rnn":
        conclusion, n, reused, claim, seconds = run_rnn(args)
    else:
        lab = run_experiment(name, args.store, quick=args.quick, workers=args.workers, resume=args.resume,
                             seeds=args.seeds, backend=args.backend, address=args.address)
        print_lab(lab)
        paths = render.write(lab, args.out)
        conclusion, n, claim = lab.conclusion, len(lab.results), lab.experiment.claim
        reused = sum(r.reused for r in lab.results)
        seconds = sum(s.seconds for s in lab.summaries)  # the runs' own training time, as stored
        console.print(f"wrote {', '.join(str(p) for p in paths)}; {n} runs in {args.store}"
                      + (f" ({reused} reused)" if reused else ""), markup=False, highlight=False, soft_wrap=True)
    return (name, claim, conclusion.holds, conclusion.held_on, conclusion.seeds, n, reused, seconds)


def run_one(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..lab.experiments import EXPERIMENTS
    from ..lab.points import summary_page

    if args.workers is not None and args.workers < 1:
        raise GradDoctorError(f"--workers must be at least 1, got {args.workers}")
    if args.name not in (*EXPERIMENTS, "rnn", "all"):
        raise unknown("experiment", args.name, (*EXPERIMENTS, "rnn", "all"))
    names = [*EXPERIMENTS, "rnn"] if args.name == "all" else [args.name]
    with _backend_session(args):
        done = [_run_named(name, args) for name in names]
    if args.name == "all":  # the overview, and the thresholds every conclusion used
        from ..lab.claims import thresholds
        from ..lab.points import bullets

        out = Path(args.out)
        (out / "summary.md").write_text(summary_page(done, args.quick))
        (out / "thresholds.md").write_text(bullets(thresholds()))
        console.print(f"wrote {out / 'summary.md'}, {out / 'thresholds.md'}", markup=False, highlight=False,
                      soft_wrap=True)
    failed = [d[0] for d in done if not d[2]]
    if failed:
        console.print(f"not supported by these measurements: {', '.join(failed)}", markup=False, highlight=False)
    return 0
