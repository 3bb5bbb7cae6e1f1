"""Measure what the theory predicts: log10 ||delta_1||^2 / ||delta_L||^2 on random MLPs at init.

delta_l is dLoss/dh_l, the gradient at hidden layer l's pre-activation (the output of
`model.body[l].linear`). Inputs are N(0, 1); the loss is sum(out * r) with r ~ N(0, 1) fixed per
seed, so dLoss/dout = r is isotropic, as the mean-field calculation assumes. float64 throughout:
the ratios reach 1e-137. Cost: one forward + backward of a batch per seed.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import nets
from ..errors import GradDoctorError
from ..nets import NetSpec
from . import meanfield as theory

BATCH = 256  # samples per seed; the ratio is of norms summed over the batch
DATA_SEED_OFFSET = 10_000  # inputs/targets use seed + this, independent of the weights


def _check(spec: NetSpec) -> None:
    reason = theory.not_applicable(spec)  # the same plain-MLP conditions as the prediction
    if reason:
        raise GradDoctorError(f"cannot measure the ratio the theory predicts for {spec.summary()}: {reason}")


def log10_ratio_one(spec: NetSpec, seed: int, batch: int = BATCH) -> float:
    """log10 ||delta_1||^2 / ||delta_L||^2 for one freshly built network (seed -> weights, data)."""
    _check(spec)
    model = nets.build(spec.with_(dtype="float64"), seed=seed)
    gen = torch.Generator().manual_seed(seed + DATA_SEED_OFFSET)
    x = torch.randn(batch, math.prod(spec.in_shape), generator=gen, dtype=torch.float64)
    r = torch.randn(batch, spec.out_features, generator=gen, dtype=torch.float64)
    pre = []  # h_l, the hidden pre-activations, in order
    h = x
    for layer in model.body:  # nets.Layer: linear -> act (plain MLP only, checked above)
        h = layer.linear(h)
        pre.append(h)
        h = layer.act(h)
    out = model.head(h)
    d_first, d_last = torch.autograd.grad((out * r).sum(), [pre[0], pre[-1]])
    value = float(torch.log10(d_first.square().sum()) - torch.log10(d_last.square().sum()))
    if not math.isfinite(value):
        raise GradDoctorError(f"the signals of {spec.summary()} leave float64's range (seed "
                              f"{seed}): measure a shallower network or a milder init")
    return value


def log10_ratio(spec: NetSpec, seeds: int = 5, batch: int = BATCH) -> np.ndarray:
    """log10 ||delta_1||^2 / ||delta_L||^2 for seeds 0..seeds-1 (one value per seed)."""
    if seeds < 1:
        raise GradDoctorError(f"seeds must be at least 1, got {seeds}")
    return np.array([log10_ratio_one(spec, s, batch) for s in range(seeds)])
