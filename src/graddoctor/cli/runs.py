"""`graddoctor runs`: list the runs in a run store (and the --store / RUN / --wide arguments other commands share)."""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict

from rich import box
from rich.markup import escape
from rich.table import Column, Table

from ..errors import GradDoctorError
from ..report.figdata import spec_summary
from ..report.terminal import print_uncut
from ..store import DEFAULT_PATH, RunInfo, RunStore
from .common import console

EXAMPLE = """example:
  graddoctor runs
  graddoctor runs --store graddoctor-runs/runs.db --kind train --json
"""


def add_store_arg(p: argparse.ArgumentParser) -> None:
    """--store PATH (default ./graddoctor-runs/runs.db)."""
    p.add_argument("--store", default=str(DEFAULT_PATH), metavar="PATH",
                   help=f"run store (sqlite file; default: {DEFAULT_PATH})")


def add_wide_arg(p: argparse.ArgumentParser) -> None:
    """--wide: the per-layer table with every column, whatever the terminal's width."""
    p.add_argument("--wide", action="store_true",
                   help="print the per-layer table with every column, at its full width (lines may wrap); "
                        "without it, a narrow terminal or $COLUMNS leaves columns out, never digits")


def add_run_arg(p: argparse.ArgumentParser) -> None:
    """The positional RUN: a run id from `graddoctor runs`, or 'last'."""
    p.add_argument("run_id", metavar="RUN", help="run id (see `graddoctor runs`) or 'last'")


def resolve_run(store: RunStore, value: str) -> int:
    """A RUN argument as a run id that exists in the store."""
    if value == "last":
        return store.latest().id
    if not value.isdigit():
        raise GradDoctorError(f"RUN must be a run id (an integer) or 'last', got {value!r}")
    return store.get_run(int(value)).id


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list the recorded runs", epilog=EXAMPLE,
                       description="List the runs in a run store: id, when, network, status, verdict, accuracy.")
    add_store_arg(p)
    p.add_argument("--kind", default=None, help="only runs of this kind (train, candidate, ...)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def runs_table(rows: list[RunInfo], store_path: str) -> Table:
    """The listing: id, when, (kind), network, status, verdict, val acc, steps."""
    kinds = len({r.kind for r in rows}) > 1  # the kind column only when there is a choice
    fixed = {"no_wrap": True, "justify": "right"}
    t = Table(Column("id", **fixed), Column("when (UTC)", no_wrap=True), *(["kind"] if kinds else []),
              Column("network", overflow="fold"), Column("status", no_wrap=True), Column("verdict", overflow="fold"),
              Column("val acc", **fixed), Column("steps", **fixed), title=f"runs in {escape(str(store_path))}",
              box=box.SIMPLE_HEAD)
    for r in rows:
        acc = "—" if r.final_acc is None or not math.isfinite(r.final_acc) else f"{r.final_acc:.3f}"
        t.add_row(str(r.id), r.created.replace("T", " ")[:16], *([escape(r.kind)] if kinds else []),
                  escape(spec_summary(r.spec)), r.status, escape(r.verdict or "—"), acc, str(r.n_steps))
    return t


def run(args: argparse.Namespace) -> int:
    with RunStore(args.store, create=False) as store:
        rows = store.runs(args.kind)
    if args.json:
        clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v
        print(json.dumps([{k: clean(v) for k, v in asdict(r).items()} for r in rows], indent=2))
        return 0
    t = runs_table(rows, args.store)
    print_uncut(console, t)  # a narrow terminal folds the network and verdict, never an id or a number
    if not rows:
        console.print("no runs yet")
    return 0
