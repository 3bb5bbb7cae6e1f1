"""`graddoctor sweep`: the cartesian grid of the network and training flags, run in parallel."""
from __future__ import annotations

import argparse
import itertools
import math
from dataclasses import replace

from rich import box
from rich.markup import escape
from rich.table import Table

from ..errors import GradDoctorError
from .common import (
    add_backend_args,
    add_net_args,
    add_train_args,
    backend_line,
    config_from_args,
    console,
    load_data,
    spec_from_args,
)
from .runs import add_store_arg

DEFAULT_OUT = "graddoctor-sweep"
# Flags that take a comma-separated list (a grid axis); the others take one value.
AXES = ("kind", "depth", "width", "activation", "negative_slope", "init", "batchnorm", "residual",
        "residual_scale", "dtype", "optimizer", "lr", "momentum", "loss", "epochs", "batch_size", "seed")
SORTS = ("acc", "ratio", "grid")
EXAMPLE = f"""examples:
  graddoctor sweep --depth 5,10,20 --activation sigmoid,relu --init xavier_normal,he_normal --epochs 5 --workers 2
  graddoctor sweep --lr 0.001,0.01,0.1 --momentum 0,0.9 --depth 20 --max-steps 300 --sort acc --resume
  graddoctor sweep --depth 10,20,40 --init xavier_normal,he_normal --backend ray --address ray://head:10001

Every flag of `graddoctor train` that names a network or training setting takes a
comma-separated list; the sweep runs every combination (in --workers processes, or as Ray
tasks with --backend ray: on the cluster at --address, or a local Ray instance), stores each
run in --store as it finishes, and prints a summary table: --sort acc (final validation
accuracy, best first), ratio (log10 of the layer-1 / last-layer error signal at init, most
vanishing first) or grid (the order of the grid). OUT/sweep.png overlays the per-layer
gradients of every run (default OUT: {DEFAULT_OUT}/). --resume skips runs already finished.
"""


def _list_of(kind):
    def parse(text: str) -> list:
        items = [s.strip() for s in str(text).split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        try:
            return [kind(s) for s in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a list of {kind.__name__} values: {text!r}") from None
    return parse


def _listify(p: argparse.ArgumentParser) -> None:
    """Make the AXES flags (added by common.add_net_args / add_train_args) take lists."""
    for action in p._actions:  # argparse keeps no public handle on its actions
        if action.dest in AXES:
            action.type = _list_of(action.type or str)
            action.default = [action.default]
            action.help = (action.help or action.dest) + " [list]"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a grid of networks in parallel and compare them", epilog=EXAMPLE,
                       description="Train every combination of the given settings under the probe, store "
                                   "the runs, print a summary table and overlay the per-layer gradients.")
    add_net_args(p)
    add_train_args(p, epochs=5)
    _listify(p)
    g = p.add_argument_group("sweep")
    g.add_argument("--max-steps", type=int, default=None, help="stop each run after this many steps")
    add_backend_args(g)
    g.add_argument("--resume", action="store_true", help="skip runs already finished in --store")
    g.add_argument("--sort", default="acc", help=f"summary order: {' | '.join(SORTS)} (default: acc)")
    g.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"where sweep.png goes (default: {DEFAULT_OUT})")
    add_store_arg(p)
    p.set_defaults(run=run)


def jobs_from_args(args: argparse.Namespace) -> list:
    """One Job per combination of the list-valued flags (validated before anything runs)."""
    from ..lab.grid import Job

    varying = [a for a in AXES if len(getattr(args, a)) > 1]
    jobs = []
    for combo in itertools.product(*(getattr(args, a) for a in AXES)):
        point = argparse.Namespace(**{**vars(args), **dict(zip(AXES, combo))})
        data = load_data(point)
        config = replace(config_from_args(point), max_steps=args.max_steps)
        coords = tuple((a, f"{a.replace('_', '-')} {_fmt(getattr(point, a))}") for a in varying)
        jobs.append(Job(spec_from_args(point, data), config, args.data, group="sweep", coords=coords))
    return jobs


def _fmt(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _sort(results: list, summaries: list, how: str) -> list[int]:
    order = list(range(len(results)))
    if how == "acc":
        order.sort(key=lambda i: -summaries[i].val_acc if math.isfinite(summaries[i].val_acc) else math.inf)
    elif how == "ratio":
        order.sort(key=lambda i: summaries[i].decades_init if math.isfinite(summaries[i].decades_init) else math.inf)
    return order


def run(args: argparse.Namespace) -> int:
    from ..lab import render
    from ..lab.conclude import acc, dec
    from ..lab.runner import run_jobs
    from ..lab.summary import summarise

    if args.sort not in SORTS:
        raise GradDoctorError(f"unknown --sort {args.sort!r}; choose one of: {', '.join(SORTS)}")
    if args.workers is not None and args.workers < 1:
        raise GradDoctorError(f"--workers must be at least 1, got {args.workers}")
    jobs = jobs_from_args(args)
    console.print(f"sweep: {len(jobs)} runs, {backend_line(args)}, store {args.store}", markup=False,
                  highlight=False, soft_wrap=True)
    results = run_jobs(jobs, args.store, args.workers, args.resume, description="sweep", backend=args.backend,
                       address=args.address)
    sums = [summarise(r.trace, r.history, r.diagnosis, r.job.label, dict(r.job.coords), r.run_id) for r in results]
    t = Table("run", "settings", "verdict", "decades at init", "decades trained", "val acc", "seconds",
              box=box.SIMPLE_HEAD, title=f"sweep summary (sorted by {args.sort})", title_justify="left")
    for i in _sort(results, sums, args.sort):
        s, r = sums[i], results[i]
        t.add_row(str(r.run_id), escape(s.label), escape(s.verdict_trained), dec(s.decades_init),
                  dec(s.decades_trained), acc(s.val_acc), "reused" if r.reused else f"{s.seconds:.1f}")
    console.print(t)
    path = render.write_profiles(sums, args.out, "sweep")
    console.print(f"figure: {path}", markup=False, highlight=False, soft_wrap=True)
    return 0
