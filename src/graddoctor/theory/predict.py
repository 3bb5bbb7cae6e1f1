"""The theory's prediction for a NetSpec: log10 ||delta_1||^2 / ||delta_L||^2 at initialisation.

delta_l is the error signal at hidden layer l's linear/conv output (theory.measure measures the
same), first vs last hidden layer. One entry point, one family per structure:

    plain MLP      meanfield (Poole et al. 2016; Schoenholz et al. 2017), layer-resolved
    residual MLP   meanmode: the wide limit (Yang & Schoenholz 2017) + the gradient's mean mode
    BatchNorm MLP  batchnorm (Yang et al. 2019), plain or residual, at the given batch size
    CNN            stack.Diagonal over per-position maps (Xiao et al. 2018), plain or residual
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..nets import NetSpec
from . import batchnorm, meanmode, stack
from . import plan as plan_mod
from .meanfield import MeanField, chi, mean_field, q_trajectory

BATCH = 256  # default batch size (BatchNorm only): theory.measure's batch
SOURCES = {
    "mlp": "mean-field theory, wide-network limit (Poole et al. 2016; Schoenholz et al. 2017)",
    "residual": "residual mean-field recursion (Yang & Schoenholz 2017) with the gradient's mean "
                "mode at this width",
    "batchnorm": "BatchNorm mean-field theory at this batch size (Yang et al. 2019), wide limit",
    "cnn": "convolutional mean-field recursion with zero-padding borders (Xiao et al. 2018), wide limit",
}


@dataclass(frozen=True)
class Prediction:
    """What the theory says about one NetSpec at initialisation (log10_ratio None: not applicable)."""

    spec_summary: str
    log10_ratio: float | None  # predicted log10 ||delta_1||^2 / ||delta_L||^2 (layer-resolved)
    reason: str = ""  # why there is no prediction, or which theory made it
    log10_ratio_fixed_point: float | None = None  # plain MLP: (L-1) log10 chi_1(q*)
    q: tuple[float, ...] = ()  # plain MLP: q_1..q_L, pre-activation variance per hidden layer
    chi: tuple[float, ...] = ()  # plain MLP: chi of the L-1 steps delta_{l+1} -> delta_l
    mean_field: MeanField | None = None  # plain MLP and CNN: the fixed-point picture of a layer
    family: str = ""  # "mlp" | "residual" | "batchnorm" | "cnn"
    layers: tuple[str, ...] = ()  # module names of the hidden linear/conv layers, forward order
    profile: tuple[float, ...] = ()  # log10 ||delta_l||^2 / ||delta_L||^2 for every layer
    gain: float | None = None  # ||delta||^2 multiplier per layer deep in a plain stack (chi_1; BN rate)
    contrast: dict[str, float] = field(default_factory=dict)  # simpler approximations' log10 ratio

    @property
    def applicable(self) -> bool:
        """True when the theory made a prediction."""
        return self.log10_ratio is not None


def family(spec: NetSpec) -> str:
    """Which recursion describes this NetSpec: mlp, residual, batchnorm or cnn."""
    if spec.kind == "cnn":
        return "cnn"
    if spec.batchnorm != "none":
        return "batchnorm"
    return "residual" if spec.residual else "mlp"


def not_applicable(spec: NetSpec, batch: int = BATCH) -> str:
    """Why the theory does not describe this NetSpec ('' when it does)."""
    if spec.depth < 2:
        return "the ratio compares the first and last hidden layer: depth must be at least 2"
    if spec.kind == "cnn" and spec.batchnorm != "none":
        return ("BatchNorm2d normalises over the batch and every position at once, which couples "
                "the positions; graddoctor's BatchNorm theory covers fully connected stacks")
    if spec.batchnorm != "none" and batch < batchnorm.MIN_BATCH:
        return f"the BatchNorm theory needs a batch of at least {batchnorm.MIN_BATCH} (got {batch})"
    if any(lay.sigma_w2 is None for blk in plan_mod.plan(spec) for lay in blk.layers):
        return f"init {spec.init!r} has no i.i.d. weight variance"
    return ""


def predict(spec: NetSpec, input_var: float = 1.0, batch: int = BATCH) -> Prediction:
    """Predicted log10 ||delta_1||^2 / ||delta_L||^2 of a NetSpec at initialisation.

    input_var is the mean squared input feature (1 for standardised or N(0, 1) inputs); batch
    matters only with BatchNorm.
    """
    reason = not_applicable(spec, batch)
    if reason:
        return Prediction(spec.summary(), None, reason)
    blocks, fam = plan_mod.plan(spec), family(spec)
    names = plan_mod.layer_names(blocks)
    a, s = spec.activation, spec.negative_slope
    if fam == "mlp":
        return _plain(spec, blocks, names, input_var)
    wide = stack.Diagonal(a, s, plan_mod.spatial(spec), input_var)
    contrast, gain, mf = {}, None, None
    if fam == "batchnorm":
        prof = stack.propagate(blocks, batchnorm.BatchNormAlgebra(a, s, spec.batchnorm, batch, input_var))
        inner = blocks[-1].layers[-1]
        gain = batchnorm.gain(a, spec.batchnorm, batch, inner.sigma_w2, inner.sigma_b2, s)
    elif fam == "residual":
        prof = meanmode.profile(blocks, a, s, spec.width, input_var)
        contrast["wide limit"] = _ratio(stack.propagate(blocks, wide))
    else:
        prof = stack.propagate(blocks, wide)
        fc = stack.Diagonal(a, s, (), input_var)
        contrast["fully connected form (no borders)"] = _ratio(stack.propagate(blocks, fc))
        inner = blocks[-1].layers[-1]
        mf = mean_field(a, inner.sigma_w2, inner.sigma_b2, input_var, s)
    prof = prof - prof[-1]
    return Prediction(spec.summary(), float(prof[0]), SOURCES[fam], mean_field=mf, family=fam,
                      layers=names, profile=tuple(prof.tolist()), gain=gain, contrast=contrast)


def _ratio(profile: np.ndarray) -> float:
    return float(profile[0] - profile[-1])


def _plain(spec: NetSpec, blocks, names: tuple[str, ...], input_var: float) -> Prediction:
    a, s = spec.activation, spec.negative_slope
    lays = blocks[0].layers
    sw2 = np.array([lay.sigma_w2 for lay in lays])
    sb2 = np.array([lay.sigma_b2 for lay in lays])
    q = q_trajectory(a, sw2[0] * input_var + sb2[0], sw2[1:], sb2[1:], s)
    # delta_l = phi'(h_l) * W_{l+1}^T delta_{l+1}: step l multiplies ||delta||^2 by chi(q_l)
    # with layer l+1's sigma_w^2, for l = 1..L-1 (q_L does not enter).
    chis = chi(a, q[:-1], sw2[1:], s)
    mf = mean_field(a, sw2[-1], sb2[-1], q[0], s)
    with np.errstate(divide="ignore"):
        steps = np.log10(chis)
        log_fp = float((spec.depth - 1) * np.log10(mf.chi1))
    prof = np.append(np.cumsum(steps[::-1])[::-1], 0.0)
    return Prediction(spec.summary(), float(prof[0]), SOURCES["mlp"], log_fp, tuple(q.tolist()),
                      tuple(chis.tolist()), mf, "mlp", names, tuple(prof.tolist()), mf.chi1)
