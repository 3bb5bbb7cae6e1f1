"""`graddoctor check FILE.py:FACTORY`: diagnose a user's model (at init, or after a few steps)."""
from __future__ import annotations

import argparse
import json

import torch

from ..diagnose.api import checkup
from ..report.terminal import print_diagnosis
from .common import console
from .factory import call_factory, first_batch, load_factory, parse_shape, resolve
from .runs import add_wide_arg

EXAMPLE = """examples:
  graddoctor check examples/models.py:deep_sigmoid --input-shape 64 --classes 10
  graddoctor check examples/models.py:digits_mlp --steps 20 --json

The factory returns a model, or (model, data, loss_fn) where data is an (inputs, targets)
batch, a DataLoader or a graddoctor Dataset. Without data, random inputs of --input-shape
and random class targets are used and the verdict is about the network at initialisation.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="diagnose your own model (file.py:factory)", epilog=EXAMPLE,
                       description="Record one forward/backward (or --steps training steps) and "
                                   "say whether gradients vanish or explode, where, and why.")
    p.add_argument("target", help="path/to/file.py:factory")
    p.add_argument("--input-shape", help="one sample's shape, e.g. 3x32x32 or 784 (no data from the factory)")
    p.add_argument("--classes", type=int, default=10, help="number of classes for random targets (default 10)")
    p.add_argument("--batch-size", type=int, default=64, help="random batch size (default 64)")
    p.add_argument("--steps", type=int, default=0, help="training steps before judging (0: at initialisation)")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate for --steps (momentum 0.9)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    p.add_argument("--strict", action="store_true", help="exit with code 1 when the verdict is not healthy")
    add_wide_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import GradDoctorError

    torch.manual_seed(args.seed)
    model, data, loss_fn = resolve(call_factory(load_factory(args.target), args.target), args.target)
    if data is not None:
        x, y = first_batch(data, args.target)
    elif args.input_shape:
        if args.classes < 1 or args.batch_size < 1:
            raise GradDoctorError("--classes and --batch-size must be at least 1")
        x = torch.randn(args.batch_size, *parse_shape(args.input_shape))
        y = torch.randint(0, args.classes, (args.batch_size,))
    else:
        raise GradDoctorError(f"{args.target} returns no data: give --input-shape (e.g. 3x32x32)")
    p = next(model.parameters(), None)
    if p is not None and x.is_floating_point():
        x = x.to(p.dtype)
    opt = None
    if args.steps > 0:
        if not args.lr > 0:
            raise GradDoctorError(f"--lr must be positive, got {args.lr}")
        opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=args.lr, momentum=0.9)
    diagnosis = checkup(model, x, y, loss_fn=loss_fn, steps=args.steps, optimizer=opt)
    if args.json:
        print(json.dumps(diagnosis.to_dict(), indent=2, default=float))
    else:
        print_diagnosis(diagnosis, console, wide=args.wide)
    return 1 if args.strict and not diagnosis.healthy else 0
