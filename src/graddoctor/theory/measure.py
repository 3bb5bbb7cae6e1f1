"""Measure what the theory predicts: log10 ||delta_1||^2 / ||delta_L||^2 on random networks at init.

delta_l is dLoss/dh_l, the gradient at hidden layer l's linear (or conv) output, `Layer.linear`
in nets.py, layers in forward order (inside residual branches too). Inputs are N(0, 1); the
loss is sum(out * r) with r ~ N(0, 1) fixed per seed, so dLoss/dout = r is isotropic, as the
mean-field calculation assumes. float64 throughout: the ratios reach 1e-137. The network is in
training mode (BatchNorm normalises with the batch's statistics). Cost: one forward + backward
of a batch per seed.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .. import nets
from ..errors import GradDoctorError
from ..nets import NetSpec

BATCH = 256  # samples per seed; the ratio is of norms summed over the batch
DATA_SEED_OFFSET = 10_000  # inputs/targets use seed + this, independent of the weights


def _check(spec: NetSpec, batch: int) -> None:
    if spec.depth < 2:
        raise GradDoctorError(f"cannot measure the ratio for {spec.summary()}: the ratio compares "
                              "the first and last hidden layer, so depth must be at least 2")
    if batch < 2 and spec.batchnorm != "none":
        raise GradDoctorError(f"batch {batch} is too small for BatchNorm's batch statistics: use 2 or more")


def layer_profile_one(spec: NetSpec, seed: int, batch: int = BATCH) -> np.ndarray:
    """log10 ||delta_l||^2 / ||delta_L||^2 for every hidden layer l (forward order), one network."""
    _check(spec, batch)
    model = nets.build(spec.with_(dtype="float64"), seed=seed)
    gen = torch.Generator().manual_seed(seed + DATA_SEED_OFFSET)
    x = torch.randn(batch, *spec.in_shape, generator=gen, dtype=torch.float64)
    r = torch.randn(batch, spec.out_features, generator=gen, dtype=torch.float64)
    pre: list[Tensor] = []  # h_l, the hidden linear/conv outputs, in forward order
    linears = [m.linear for m in model.modules() if isinstance(m, nets.Layer)]
    hooks = [lin.register_forward_hook(lambda _m, _i, out: pre.append(out)) for lin in linears]
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    grads = torch.autograd.grad((out * r).sum(), pre)
    norms = torch.stack([torch.log10(g.square().sum()) for g in grads])
    values = (norms - norms[-1]).numpy()
    if not np.isfinite(values).all():
        raise GradDoctorError(f"the signals of {spec.summary()} leave float64's range (seed "
                              f"{seed}): measure a shallower network or a milder init")
    return values


def log10_ratio_one(spec: NetSpec, seed: int, batch: int = BATCH) -> float:
    """log10 ||delta_1||^2 / ||delta_L||^2 for one freshly built network (seed -> weights, data)."""
    return float(layer_profile_one(spec, seed, batch)[0])


def log10_ratio(spec: NetSpec, seeds: int = 5, batch: int = BATCH) -> np.ndarray:
    """log10 ||delta_1||^2 / ||delta_L||^2 for seeds 0..seeds-1 (one value per seed)."""
    if seeds < 1:
        raise GradDoctorError(f"seeds must be at least 1, got {seeds}")
    return np.array([log10_ratio_one(spec, s, batch) for s in range(seeds)])
