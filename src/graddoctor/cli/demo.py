"""`graddoctor demo`: the main job on the bundled digits data."""
from __future__ import annotations

import argparse

from rich.table import Table

from .. import data as data_mod, nets, training as train_mod
from ..nets import NetSpec
from ..training import TrainConfig
from .common import console

EXAMPLE = "example:\n  graddoctor demo --epochs 5\n"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on the bundled digits data", epilog=EXAMPLE,
                       description="Train a deep sigmoid MLP and a deep ReLU MLP on digits and compare.")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    data = data_mod.digits(seed=args.seed)
    cfg = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, epochs=args.epochs, seed=args.seed)
    table = Table("network", "final train acc", "final val acc", title=f"depth {args.depth} on {data!r}")
    for act, ini in (("sigmoid", "xavier_normal"), ("relu", "he_normal")):
        spec = NetSpec(depth=args.depth, width=64, in_shape=data.in_shape, out_features=10,
                       activation=act, init=ini)
        console.print(f"[bold]{spec.summary()}[/bold]")
        hist = train_mod.train(nets.build(spec, seed=args.seed), data, cfg)
        table.add_row(spec.summary(), f"{hist.train_acc[-1]:.3f}", f"{hist.val_acc[-1]:.3f}")
    console.print(table)
    return 0
