"""`graddoctor train`: build a NetSpec network, train it, print the accuracies."""
from __future__ import annotations

import argparse

from rich.table import Table

from .. import nets
from .. import training as train_mod
from .common import add_net_args, add_train_args, config_from_args, console, load_data, spec_from_args

EXAMPLE = """example:
  graddoctor train --kind mlp --depth 20 --width 64 --activation sigmoid --init xavier_normal \\
      --batchnorm none --residual 0 --data digits --optimizer sgd --lr 0.1 --momentum 0.9 \\
      --epochs 10 --seed 0
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a deep network from the bench", epilog=EXAMPLE,
                       description="Build a network from flags, train it on a data set, print accuracies.")
    add_net_args(p)
    add_train_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    data = load_data(args)
    spec = spec_from_args(args, data)
    cfg = config_from_args(args)
    model = nets.build(spec, seed=args.seed)
    console.print(f"[bold]{spec.summary()}[/bold]  ({nets.count_parameters(model):,} parameters)")
    console.print(nets.describe(model), highlight=False, markup=False)
    hist = train_mod.train(model, data, cfg)
    t = Table("epoch", "train loss", "train acc", "val loss", "val acc", title=f"{data!r}")
    for i in range(len(hist.epoch)):
        t.add_row(str(hist.epoch[i]), f"{hist.train_loss[i]:.4f}", f"{hist.train_acc[i]:.3f}",
                  f"{hist.val_loss[i]:.4f}", f"{hist.val_acc[i]:.3f}")
    console.print(t)
    if hist.diverged_at is not None:
        console.print(f"[red]training diverged at step {hist.diverged_at} (loss is not finite): "
                      f"try a lower --lr or --clip 1.0[/red]")
    console.print(f"final: train acc {hist.train_acc[-1]:.3f}, val acc {hist.val_acc[-1]:.3f} "
                  f"({hist.seconds:.1f} s)")
    return 0
