"""`graddoctor export RUN`: a stored run as plain CSV files and/or TensorBoard event files."""
from __future__ import annotations

import argparse

from ..errors import GradDoctorError
from ..report.csv_export import export_csv
from ..store import RunStore
from .common import console
from .runs import add_run_arg, add_store_arg, resolve_run

EXAMPLE = """example:
  graddoctor export 3 --csv run3-csv/
  graddoctor export last --tensorboard tb/ && tensorboard --logdir tb/
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a stored run as CSV or TensorBoard files", epilog=EXAMPLE,
                       description="Write one run's steps, per-layer statistics, history, findings and "
                                   "treatments as CSV files, or its statistics as TensorBoard scalars/histograms.")
    add_run_arg(p)
    add_store_arg(p)
    p.add_argument("--csv", metavar="DIR", default=None, help="write CSV files into DIR")
    p.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="write TensorBoard event files under DIR (needs: pip install tensorboard)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.csv and not args.tensorboard:
        raise GradDoctorError("say where to export: --csv DIR and/or --tensorboard DIR")
    with RunStore(args.store, create=False) as store:
        run_id = resolve_run(store, args.run_id)
        if args.csv:
            paths = export_csv(store, run_id, args.csv)
            console.print(f"run {run_id}: {len(paths)} CSV files in {args.csv}", markup=False, highlight=False)
        if args.tensorboard:
            from ..report.tensorboard import export_tensorboard

            out = export_tensorboard(store, run_id, args.tensorboard)
            console.print(f"run {run_id}: TensorBoard events in {out} (tensorboard --logdir {args.tensorboard})",
                          markup=False, highlight=False)
    return 0
