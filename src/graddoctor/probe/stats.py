"""Pure reductions for the probe: tensors in, a few 0-d tensors out (same device, no host sync).

Nothing here registers hooks or copies to the host; the probe decides when to call these and
copies everything it collected to the host once per recorded step (see collect.py).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .. import activations

# grad_fn class of an activation's output -> graddoctor.activations registry name. Reading the
# grad_fn recognises activations applied as modules and functionally (F.relu, torch.sigmoid)
# alike, at no cost. EluBackward0 is shared by elu and selu (told apart by its scale);
# HardtanhBackward0 is counted as relu only for min_val == 0 (ReLU6), like MODULE_TO_ACTIVATION.
GRAD_FN_ACTIVATION: dict[str, str] = {
    "SigmoidBackward0": "sigmoid", "TanhBackward0": "tanh", "ReluBackward0": "relu",
    "LeakyReluBackward0": "leaky_relu", "PreluKernelBackward0": "prelu", "EluBackward0": "elu",
    "EluBackward1": "elu", "GeluBackward0": "gelu", "SiluBackward0": "silu",
    "HardtanhBackward0": "relu",
}
# Ops that only reshape or move values: looked through to find the activation behind a
# flatten/view/transpose. Ops that change values (dropout, pooling, adds) are not.
SHAPE_OPS = frozenset({
    "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "TBackward0",
    "TransposeBackward0", "TransposeBackward1", "PermuteBackward0", "SqueezeBackward0",
    "SqueezeBackward1", "SqueezeBackward2", "UnsqueezeBackward0", "CloneBackward0",
    "AliasBackward0",
})
MAX_LOOKBACK = 8  # shape ops walked through at most (a flatten is one)


class Source(NamedTuple):
    """The activation that produced a tensor: registry name and the autograd node that ran it."""

    name: str  # registry name in graddoctor.activations
    node: object  # its grad_fn: holds the ReLU family's slope and, for GELU/SiLU/ELU, the input


def activation_of(t: Tensor | None) -> Source | None:
    """Which registry activation produced `t` (None for raw inputs and anything else)."""
    fn = getattr(t, "grad_fn", None)
    for _ in range(MAX_LOOKBACK):
        if fn is None or type(fn).__name__ not in SHAPE_OPS:
            break
        fn = fn.next_functions[0][0] if fn.next_functions else None
    kind = type(fn).__name__
    name = GRAD_FN_ACTIVATION.get(kind)
    if name is None or (kind == "HardtanhBackward0" and fn._saved_min_val != 0):
        return None
    if kind.startswith("Elu") and fn._saved_scale != 1.0:
        name = "selu"
    return Source(name, fn)


def _slope(source: Source) -> float | Tensor:
    """Slope for x <= 0 of a ReLU-family activation (PReLU: RMS of its learnt slopes)."""
    if source.name == "leaky_relu":
        return source.node._saved_negative_slope
    if source.name == "prelu":
        return source.node._saved_weight.detach().square().mean().sqrt()
    return 0.0


def per_sample(t: Tensor | None) -> int:
    """Elements per sample: dimension 0 is the batch (0 for no tensor)."""
    if t is None:
        return 0
    return t.numel() // t.shape[0] if t.dim() and t.shape[0] else 1


def relu_deriv_sq_sum(y: Tensor, slope: float | Tensor) -> Tensor:
    """Sum of phi'^2 over the outputs y of a ReLU-family unit: n(y > 0) + slope^2 n(y <= 0).

    RMS(phi') = sqrt(frac(y > 0) + slope^2 frac(y <= 0)); the sum form lets calls be pooled.
    Float ops throughout: ~2x faster than (y > 0).sum() on this torch's CPU kernels.
    """
    nonneg = isinstance(slope, float) and slope == 0.0  # ReLU: y >= 0, so sign(y) is 0 or 1
    pos = (y.sign() if nonneg else y.clamp(min=0).sign_()).sum(dtype=_count_dtype(y))
    return pos + (y.numel() - pos) * (slope * slope)


def _count_dtype(t: Tensor) -> torch.dtype:
    """float32 counts are exact up to 2^24 elements; float64 beyond."""
    return torch.float32 if t.numel() <= 2**24 else torch.float64


def _sq_sum(t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t.float() if t.element_size() < 4 else t).square()


def input_stats(x: Tensor, source: Source | None) -> tuple[Tensor, Tensor, Tensor, Tensor | int | None,
                                                           Tensor | None]:
    """What a layer receives: (mean, centred norm, dead units, saturated count, sum of phi'^2).

    Units are all dimensions but the first (the batch); a unit is dead when it is exactly 0 for
    every sample. Saturation is the registry's test (Activation.saturated); the count is 0 for
    known non-saturating activations and None (unknown) when no activation was recognised, as
    is the phi' sum when phi' cannot be had from the output or from autograd's saved input.
    """
    x = x.float() if x.element_size() < 4 else x  # half/bfloat16: reduce in float32
    flat = x.reshape(x.shape[0], -1) if x.dim() else x.reshape(1, 1)
    mean = flat.mean()
    centred = torch.dist(flat, mean)  # two-pass (no cancellation when std << |mean|), no temporary
    nonneg = source is not None and source.name == "relu"  # outputs >= 0: no abs() pass needed
    dead = (flat if nonneg else flat.abs()).amax(0).eq_(0).sum()
    if source is None:
        return mean, centred, dead, None, None
    act = activations.get(source.name)
    saturated: Tensor | int = 0
    d_sq = None
    if act.relu_family:
        d_sq = relu_deriv_sq_sum(x, _slope(source))
    elif act.deriv_from_output is not None:
        d = act.deriv_from_output(x)
        d_sq = _sq_sum(d)
        # the registry's test, Activation.saturated(x).sum(), with d computed once
        saturated = below_count(d, activations.SATURATION_FRACTION * act.max_deriv)
    elif hasattr(source.node, "_saved_self"):  # phi' of the input autograd saved (GELU, SiLU, ELU)
        d_sq = _sq_sum(act.deriv(source.node._saved_self, 0.0))
    return mean, centred, dead, saturated, d_sq


def below_count(d: Tensor, threshold: float) -> Tensor:
    """Number of entries of d below threshold (d is consumed); float ops: ~2x faster than a mask."""
    return d.sub_(threshold).clamp_(max=0).sign_().sum(dtype=_count_dtype(d)).neg_()


def output_stats(y: Tensor) -> tuple[Tensor, Tensor]:
    """(norm, count of NaN/Inf entries) of a layer's output."""
    y = y.float() if y.element_size() < 4 else y
    norm = torch.linalg.vector_norm(y)
    nonfinite = torch.nan_to_num_(y - y, nan=1.0).sum()  # y - y is 0 where finite, NaN elsewhere
    return norm, nonfinite


def nonfinite_count(t: Tensor) -> Tensor:
    """Number of NaN/Inf entries (0-d tensor)."""
    return torch.isfinite(t).logical_not_().sum()
