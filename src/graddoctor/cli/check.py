"""`graddoctor check FILE.py:FACTORY`: diagnose a user's model (at init, or after a few steps of its training)."""
from __future__ import annotations

import argparse
import json

import torch

from ..diagnose.findings import Diagnosis
from ..errors import GradDoctorError
from ..report.terminal import print_diagnosis
from .common import console
from .factory import UserSetup, load_setup, parse_shape
from .runs import add_wide_arg

EXAMPLE = """examples:
  graddoctor check examples/models.py:deep_sigmoid --input-shape 64 --classes 10
  graddoctor check examples/models.py:digits_mlp --steps 20 --json
  graddoctor check examples/models.py:digits_training --steps 30

The factory returns a model, (model, inputs, targets), (model, data[, loss_fn]) where data is
an (inputs, targets) pair, a DataLoader or a graddoctor Dataset, or
(model, loader, train_step[, make_optimizer]) with your own train_step(model, batch) -> loss
and make_optimizer(params) -> optimizer: --steps N then trains with those, on the loader's
batches in turn. Without data, random inputs of --input-shape and random class targets are
used and the verdict is about the network at initialisation.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="diagnose your own model (file.py:factory)", epilog=EXAMPLE,
                       description="Record one forward/backward (or --steps training steps with your data, "
                                   "step and optimizer) and say whether gradients vanish or explode, where, "
                                   "and why.")
    p.add_argument("target", help="path/to/file.py:factory")
    p.add_argument("--input-shape", help="one sample's shape, e.g. 3x32x32 or 784 (no data from the factory)")
    p.add_argument("--classes", type=int, default=10, help="number of classes for random targets (default 10)")
    p.add_argument("--batch-size", type=int, default=64, help="random batch size (default 64)")
    p.add_argument("--steps", type=int, default=0, help="training steps before judging (0: at initialisation)")
    p.add_argument("--lr", type=float, default=0.01,
                   help="SGD learning rate for --steps (momentum 0.9) when the factory gives no make_optimizer")
    p.add_argument("--every", type=int, default=1, help="record every k-th step (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    p.add_argument("--strict", action="store_true", help="exit with code 1 when the verdict is not healthy")
    add_wide_arg(p)
    p.set_defaults(run=run)


def random_batch(shape: str, classes: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs of `shape` ('3x32x32') and random class targets, for a factory without data."""
    if classes < 1 or batch_size < 1:
        raise GradDoctorError("--classes and --batch-size must be at least 1")
    return torch.randn(batch_size, *parse_shape(shape)), torch.randint(0, classes, (batch_size,))


def check_setup(setup: UserSetup, steps: int = 0, lr: float = 0.01, every: int = 1) -> Diagnosis:
    """Watch `steps` steps of the user's training (0: one forward/backward at init) and diagnose.

    Each step takes the next batch from the loader, computes the loss with the user's
    train_step (or the default), runs backward and the user's optimizer (or SGD(lr, momentum
    0.9)). The model is trained in place.
    """
    from ..diagnose.api import diagnose
    from ..probe.probe import watch

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise GradDoctorError(f"--steps must be a whole number >= 0, got {steps!r}")
    model = setup.model
    setup.trainable()  # every parameter frozen: say so before anything runs
    opt = setup.optimizer(lr) if steps > 0 else None
    batches, first = setup.batches(), None
    was_training = model.training
    model.train()
    try:
        with watch(model, every=every, stats="full", optimizer=opt) as probe:
            for _ in range(max(steps, 1)):
                batch = next(batches)
                first = batch if first is None else first
                model.zero_grad(set_to_none=True)
                loss = setup.loss(batch)
                setup.backward(loss)
                if opt is not None and torch.isfinite(loss):
                    opt.step()
                probe.step(loss)
    finally:
        model.train(was_training)
    diagnosis = diagnose(probe.trace)
    x = first[0] if isinstance(first, (tuple, list)) and first else None
    if steps == 0 and isinstance(x, torch.Tensor):
        from ..diagnose.api import theory_evidence

        theory = theory_evidence(model, diagnosis, x)
        if theory:
            diagnosis.context["theory"] = theory
    return diagnosis


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    setup = load_setup(args.target)
    if setup.loader is None and args.input_shape:
        setup.loader = [random_batch(args.input_shape, args.classes, args.batch_size)]
    diagnosis = check_setup(setup, steps=args.steps, lr=args.lr, every=args.every)
    if args.json:
        print(json.dumps(diagnosis.to_dict(), indent=2, default=float))
    else:
        if args.steps > 0:
            console.print(f"checked {setup.describe()}; {args.steps} steps", highlight=False, markup=False,
                          soft_wrap=True)
        print_diagnosis(diagnosis, console, wide=args.wide)
    return 1 if args.strict and not diagnosis.healthy else 0
