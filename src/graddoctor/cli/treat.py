"""`graddoctor treat`: diagnose, try the remedies, print which one fixes the gradient (measured)."""
from __future__ import annotations

import argparse

import torch

from ..remedies.treat import BUDGET_STEPS, treat
from ..report.terminal import print_diagnosis
from ..training import TrainConfig
from .common import add_net_args, add_train_args, config_from_args, console, load_data, spec_flags, spec_from_args
from .runs import add_wide_arg

EXAMPLE = f"""examples:
  graddoctor treat --depth 20 --activation sigmoid --init xavier_normal --data digits --lr 0.01
  graddoctor treat examples/models.py:deep_sigmoid --data digits --save treated/
  graddoctor treat my_lm.py:setup --budget-steps 40 --max-steps 200 --save treated/

Without FILE.py:FACTORY the network is built from the flags (as in `graddoctor train`) and the
winner is printed as the flags to re-run it with. With a factory (the same as `check`'s: it
returns a model, (model, data[, loss_fn]), or (model, loader, train_step[, make_optimizer]) to
treat in your own training step and optimizer, the loader streamed), the winner is printed as
the list of changes to your model; --save DIR writes them (changes.json) with the winner's state dict, which
graddoctor.load_treated(YourModel(...), DIR) loads into a fresh instance of your class (no code
from the files is executed). Data comes from the factory,
or else from --data. Each candidate trains at most --budget-steps steps (default {BUDGET_STEPS}).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("treat", help="apply the remedies, retrain briefly, show which one fixes it",
                       epilog=EXAMPLE,
                       description="Diagnose a network, try the remedies its diagnosis points to "
                                   "(screened at initialisation, then trained with the same seed, data "
                                   "order and step budget as the untreated network) and print the table.")
    p.add_argument("target", nargs="?", help="path/to/file.py:factory (default: build from the flags)")
    p.add_argument("--budget-steps", type=int, default=BUDGET_STEPS, help="steps per candidate")
    p.add_argument("--no-pairs", action="store_true", help="do not try pairs when no single remedy fixes it")
    p.add_argument("--max-steps", type=int, default=None,
                   help="optimizer steps for the whole treatment (default: no cap)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="wall time for the whole treatment, e.g. that of one training run (default: no cap)")
    p.add_argument("--save", metavar="DIR", help="write the winner: DIR/changes.json and DIR/state_dict.pt "
                                                 "(load with graddoctor.load_treated(YourModel(...), DIR))")
    add_net_args(p)
    add_train_args(p)
    add_wide_arg(p)
    p.set_defaults(run=run)


def _config_flags(before: TrainConfig, after: TrainConfig) -> str:
    """The training flags a winner changed: '--lr 0.001 --clip 1'."""
    out = []
    for field, flag in (("lr", "--lr"), ("momentum", "--momentum"), ("clip_norm", "--clip")):
        if getattr(before, field) != getattr(after, field):
            out.append(f"{flag} {getattr(after, field):g}")
    return " ".join(out)


def run(args: argparse.Namespace) -> int:
    from ..errors import GradDoctorError

    if args.budget_steps < 2:
        raise GradDoctorError(f"--budget-steps must be at least 2, got {args.budget_steps}")
    config = config_from_args(args)
    loss_fn = None
    train_step = make_optimizer = None
    if args.target:
        from .factory import load_setup

        torch.manual_seed(args.seed)
        setup = load_setup(args.target)
        subject, what = setup.model, setup.describe()
        make_optimizer = setup.make_optimizer
        if setup.user_step:  # (model, loader, train_step[, make_optimizer]): the user's own loop
            data, train_step = setup.loader, setup.train_step
        else:  # a model, or (model, data[, loss_fn]): data from the factory, else from --data
            data, loss_fn = (setup.data if setup.data is not None else load_data(args)), setup.loss_fn
    else:
        data = load_data(args)
        subject = spec_from_args(args, data)
        what = subject.summary()
    console.print(f"[bold]treating {what}[/bold]", highlight=False, soft_wrap=True)
    result = treat(subject, data, loss_fn, budget_steps=args.budget_steps, seed=args.seed, config=config,
                   train_step=train_step, make_optimizer=make_optimizer, pairs=not args.no_pairs,
                   max_steps=args.max_steps, max_seconds=args.max_seconds)
    print_diagnosis(result.diagnosis, console, wide=args.wide)
    console.print(str(result), highlight=False, markup=False, soft_wrap=True)
    best = result.best
    if best is not None and best.patient.spec is not None:
        parts = (spec_flags(best.patient.spec), _config_flags(config, best.patient.config))
        flags = " ".join(x for x in parts if x)
        console.print(f"re-run the winner: graddoctor train {flags} --data {args.data}", highlight=False,
                      soft_wrap=True)
    if args.save:
        if best is None:
            raise GradDoctorError("nothing to save: no candidate fixed the problem "
                                  "(try a larger --budget-steps)")
        where = result.save(args.save)
        console.print(f"saved the winner to {where} (changes.json, state_dict.pt); load it into a fresh "
                      f"instance of your class with graddoctor.load_treated(model, {args.save!r})",
                      highlight=False, soft_wrap=True)
    return 0
