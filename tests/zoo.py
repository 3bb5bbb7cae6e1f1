"""The zoo: real architectures from `transformers` (and torch's own layers) with their usual recipe.

Every member is built from a small config in code at its library's default initialisation
(nothing downloaded; `HF_HUB_OFFLINE=1`), keeps a realistic *depth* (12 encoder blocks for a
BERT-like model, ResNet-50 stage depths) with small widths and resolutions, and comes with a few
fixed synthetic batches of its task (labels from a fixed random teacher, so the loss can fall),
its usual loss (`train_step`) and its usual optimizer (AdamW at a small-scale learning rate).
`PLANTED` holds pathologies planted in the same architectures, each with a ground truth measured
by plain autograd (zoo_oracle.py); `HARMLESS` plantings that turned out harmless (expected
healthy), `UNSCORED` ones that harm without a gradient signature (`ALL` = the three; see
zoo_planted.py); `judge()` runs graddoctor's public API on one recipe.

Import as a plain module: `sys.path.insert(0, "tests"); import zoo` (no pytest dependency).
The pieces: zoo_base.py (dataclasses, split, synthetic tasks), zoo_models.py (the catalogue),
zoo_faults.py (how faults are planted), zoo_planted.py (the plantings and their claims),
zoo_oracle.py (the autograd measurements behind them), zoo_evidence.json (their recorded numbers).

The split (issue 14) is by architecture *family*, fixed before anything was tuned: the 27 families
planned at the first commit, sorted by name, alternate calibration, held_out, calibration, ...
(zoo_base.FAMILIES spells the result out and is never edited); a family added later takes the half
crc32(family name) % 2 (0: calibration). Planted cases belong to their base model's family.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import math
import time
import traceback
from dataclasses import dataclass, field

import torch
from torch import nn
from zoo_base import FAMILIES, HALVES, N_BATCHES, Planted, ZooModel, half_of
from zoo_models import MODELS
from zoo_planted import ALL, HARMLESS, PLANTED, UNSCORED

import graddoctor as gd

ZOO: tuple[ZooModel, ...] = MODELS

__all__ = ["ALL", "FAMILIES", "HALVES", "HARMLESS", "N_BATCHES", "PLANTED", "UNSCORED", "ZOO", "Planted",
           "Verdicts", "ZooModel", "get", "half_of", "hooks_of", "judge"]


def get(name: str) -> ZooModel:
    """The zoo member, or the planting's recipe (planted, harmless or unscored), called `name`."""
    recipes = {m.name: m for m in ZOO} | {p.name: p.model for p in ALL}
    if name not in recipes:
        raise KeyError(f"no zoo model {name!r}; choose one of: {', '.join(recipes)}")
    return recipes[name]


@dataclass
class Verdicts:
    """graddoctor's verdicts on one recipe: at init and after training, with what it cost."""

    name: str
    init: gd.Diagnosis | None  # one forward/backward under watch(), then diagnose()
    trained: gd.Diagnosis | None  # `steps` steps of the recipe's optimizer under watch(optimizer=)
    seconds: float  # wall time of the whole judgement (build, init, training, both diagnoses)
    losses: list[float] = field(default_factory=list)  # training loss per step
    hooks_clean: bool = True  # every module, parameter, optimizer and global hook dict as before
    error: str | None = None  # the exception, if graddoctor (or the recipe) raised one

    @property
    def loss_drop(self) -> float:
        """First training loss minus the mean of the last five (nan if none or non-finite)."""
        if len(self.losses) < 2:
            return math.nan
        return self.losses[0] - sum(self.losses[-5:]) / len(self.losses[-5:])


def hooks_of(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Every hook registry that watch() could touch, as {where: frozenset(hook ids)}."""
    from torch.nn.modules import module as mod
    from torch.optim import optimizer as optmod

    out = {}
    for name, m in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks"):
            out[f"{name}.{attr}"] = frozenset(getattr(m, attr, {}) or {})
    for name, p in model.named_parameters():
        out[f"{name}._backward_hooks"] = frozenset(p._backward_hooks or {})
        out[f"{name}._post_accumulate_grad_hooks"] = frozenset(p._post_accumulate_grad_hooks or {})
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks"):
        out[attr] = frozenset(getattr(mod, attr, {}))
    for attr in ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks"):
        out[attr] = frozenset(getattr(optmod, attr, {}))
    if optimizer is not None:
        out["optimizer.pre"] = frozenset(optimizer._optimizer_step_pre_hooks)
        out["optimizer.post"] = frozenset(optimizer._optimizer_step_post_hooks)
    return out


def judge(m: ZooModel, seed: int = 0, steps: int = 50, every: int = 1) -> Verdicts:
    """graddoctor's verdict on `m` at init and after `steps` steps of its own recipe (public API only)."""
    t0 = time.perf_counter()
    model = m.make(seed)
    batches = m.batches(seed, N_BATCHES)
    v = Verdicts(m.name, None, None, 0.0)
    before = hooks_of(model)
    opt, opt_before = None, None
    try:
        torch.manual_seed(seed)  # dropout masks
        with gd.watch(model) as probe:  # at init: one forward/backward, no update
            loss = m.train_step(model, batches[0])
            loss.backward()
            probe.step(loss)
        v.init = gd.diagnose(probe.trace)
        model.zero_grad(set_to_none=True)
        opt = m.make_optimizer(model.parameters())
        opt_before = hooks_of(model, opt)
        with gd.watch(model, optimizer=opt, every=every) as probe:
            for i in range(steps):
                opt.zero_grad(set_to_none=True)
                loss = m.train_step(model, batches[i % len(batches)])
                loss.backward()
                opt.step()
                probe.step(loss)
                v.losses.append(float(loss.detach()))
        v.trained = gd.diagnose(probe.trace)
    except Exception as exc:  # reported and counted by the benchmark, never raised
        v.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        v.error += " | " + traceback.extract_tb(exc.__traceback__)[-1].filename.rsplit("/", 2)[-1]
    v.hooks_clean = hooks_of(model) == before and (opt_before is None or hooks_of(model, opt) == opt_before)
    v.seconds = time.perf_counter() - t0
    return v
