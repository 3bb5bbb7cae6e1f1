"""`graddoctor report RUN`: the self-contained HTML report (and the figures as PNG + SVG)."""
from __future__ import annotations

import argparse

from ..store import RunStore
from .common import console
from .runs import add_run_arg, add_store_arg, resolve_run

EXAMPLE = """example:
  graddoctor report last --out report.html
  graddoctor report 3 --compare 1 2 --figures figures/ --store graddoctor-runs/runs.db
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write the HTML report of a stored run", epilog=EXAMPLE,
                       description="Write one self-contained HTML file (figures inlined, opens offline): "
                                   "verdict, per-layer table, figures, causes, remedies, treatments.")
    add_run_arg(p)
    add_store_arg(p)
    p.add_argument("--out", default="report.html", metavar="FILE", help="HTML file to write (default: report.html)")
    p.add_argument("--figures", default=None, metavar="DIR", help="also write each figure as PNG and SVG into DIR")
    p.add_argument("--compare", nargs="+", default=[], metavar="RUN",
                   help="runs to overlay in the gradient-by-depth and training figures")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..report.html import write_report

    with RunStore(args.store, create=False) as store:
        run_id = resolve_run(store, args.run_id)
        compare = tuple(resolve_run(store, c) for c in args.compare)
        out = write_report(store, run_id, args.out, compare, args.figures)
    console.print(f"report: {out}", markup=False, highlight=False)
    if args.figures:
        console.print(f"figures: {args.figures}", markup=False, highlight=False)
    return 0
