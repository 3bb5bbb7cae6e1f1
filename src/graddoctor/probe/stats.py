"""Pure reductions for the probe: tensors in, a few 0-d tensors out (same device, no host sync).

Nothing here registers hooks or copies to the host; the probe decides when to call these and
copies everything it collected to the host once per recorded step (see collect.py).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .. import activations
from .scratch import Scratch

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
# identity autograd Functions that wrap a module's inputs (FSDP2's post-backward hook): output i is input i
PASS_THROUGH = frozenset({"RegisterPostBackwardFunctionBackward"})
MAX_LOOKBACK = 8  # shape ops walked through at most (a flatten is one)
NONNEGATIVE = frozenset({"relu", "sigmoid"})  # outputs >= 0: |x| == x, so dead units need no abs()
# -phi'(y) written into `out`, rounding exactly as the registry's deriv_from_output (1 - y*y,
# y*(1 - y); tests/test_probe_cost.py checks bit-equality): two kernels into reused memory
# instead of two fresh activation-sized temporaries. Other activations use the registry's.
NEG_DERIV_INTO: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "tanh": lambda y, out: torch.mul(y, y, out=out).sub_(1),  # y*y - 1
    "sigmoid": lambda y, out: torch.sub(y, 1, out=out).mul_(y),  # (y - 1)*y
}
# phi'(y) falls as |y| grows, also as rounded in float32 (fl(1 - fl(y*y)) is monotone in |y|): the
# smallest phi' is phi'(max |y|), read from the per-unit maxima of |y| the dead-unit count takes anyway
# (no pass over -phi' to find its largest value)
LEAST_DERIV_AT_MAX_ABS: dict[str, Callable[[np.float32], np.float32]] = {
    "tanh": lambda m: np.float32(1) - m * m,
}


# phi'(z) by autograd's own fused backward kernel (one pass; the registry's GELU formula takes
# ~10 passes and an erf: ~10x slower on CPU), evaluated with ones as the incoming gradient. The
# same derivative the backward pass applies (GELU's `approximate` mode included).
FUSED_DERIV: dict[str, Callable[[Tensor, object, Tensor | None], Tensor]] = {
    "gelu": lambda z, node, out: (torch.ops.aten.gelu_backward(_ones(z), z, approximate=node._saved_approximate)
                                  if out is None else torch.ops.aten.gelu_backward.grad_input(
                                      _ones(z), z, approximate=node._saved_approximate, grad_input=out)),
    "silu": lambda z, node, out: (torch.ops.aten.silu_backward(_ones(z), z) if out is None
                                  else torch.ops.aten.silu_backward.grad_input(_ones(z), z, grad_input=out)),
}


def _ones(z: Tensor) -> Tensor:
    return torch.ones((), dtype=z.dtype, device=z.device).expand_as(z)


class Source(NamedTuple):
    """The activation that produced a tensor: registry name and the autograd node that ran it."""

    name: str  # registry name in graddoctor.activations
    node: object  # its grad_fn: holds the ReLU family's slope and, for GELU/SiLU/ELU, the input
    pad: tuple[int, ...] | None = None  # F.pad's widths applied to the activation's output (see interior)


def activation_of(t: Tensor | None) -> Source | None:
    """Which registry activation produced `t` (None for raw inputs and anything else).

    Looks through shape ops, and through padding applied last (TensorFlow-style "same" padding
    before a convolution, as in MobileNet and EfficientNet): the Source then carries the pad
    widths, and `interior(t, source.pad)` is the activation's output itself.
    """
    fn = getattr(t, "grad_fn", None)
    if type(fn).__name__ == "ConstantPadNdBackward0" and fn.next_functions and fn.next_functions[0][0] is not None:
        pad = tuple(p - 2**64 if p >= 2**63 else p for p in fn._saved_pad)  # saved as unsigned: -1 is 2**64 - 1
        inner = _activation_at(*fn.next_functions[0]) if min(pad, default=0) >= 0 else None  # < 0: a crop
        return inner._replace(pad=pad) if inner is not None else None
    return _activation_at(fn, getattr(t, "output_nr", 0))


def interior(t: Tensor, pad: tuple[int, ...] | None) -> Tensor:
    """The view of `t` without the padding F.pad(x, pad) added (pad: (left, right) per dim, last dim first)."""
    if not pad:
        return t
    index = [slice(None)] * t.dim()
    for i in range(len(pad) // 2):
        dim = t.dim() - 1 - i
        index[dim] = slice(pad[2 * i], t.shape[dim] - pad[2 * i + 1])
    return t[tuple(index)]


def _activation_at(fn: object, nr: int) -> Source | None:
    """activation_of for the output `nr` of autograd node `fn` (shape ops looked through)."""
    for _ in range(MAX_LOOKBACK):
        kind = type(fn).__name__
        if fn is None or (kind not in SHAPE_OPS and kind not in PASS_THROUGH) or not fn.next_functions:
            break
        fn, nr = fn.next_functions[nr if kind in PASS_THROUGH else 0]
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


def first_tensor(obj: object) -> Tensor | None:
    """The first tensor in a module's arguments or output (tuples, lists, dicts, ModelOutputs), depth first."""
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        return next((t for t in map(first_tensor, obj) if t is not None), None)
    if isinstance(obj, dict):  # transformers' ModelOutput is an OrderedDict of its non-None fields
        return first_tensor(list(obj.values()))
    return None


def per_sample(t: Tensor | None) -> int:
    """Elements per sample: dimension 0 is the batch (0 for no tensor)."""
    if t is None:
        return 0
    return t.numel() // t.shape[0] if t.dim() and t.shape[0] else 1


def relu_deriv_sq_sum(y: Tensor, slope: float | Tensor, scratch: Scratch | None = None) -> Tensor:
    """Sum of phi'^2 over the outputs y of a ReLU-family unit: n(y > 0) + slope^2 n(y <= 0).

    RMS(phi') = sqrt(frac(y > 0) + slope^2 frac(y <= 0)); the sum form lets calls be pooled.
    Float ops throughout: ~2x faster than (y > 0).sum() on this torch's CPU kernels.
    """
    tmp = _temp(y, scratch)
    nonneg = isinstance(slope, float) and slope == 0.0  # ReLU: y >= 0, so sign(y) is 0 or 1
    pos = (torch.sign(y, out=tmp) if nonneg else torch.clamp(y, min=0, out=tmp).sign_()).sum(
        dtype=_count_dtype(y))
    return pos + (y.numel() - pos) * (slope * slope)


def _temp(t: Tensor, scratch: Scratch | None) -> Tensor | None:
    """`out=` for a temporary shaped like t: scratch memory, or None (the kernel allocates)."""
    return scratch.like(t) if scratch is not None else None


def _count_dtype(t: Tensor) -> torch.dtype:
    """float32 counts are exact up to 2^24 elements; float64 beyond."""
    return torch.float32 if t.numel() <= 2**24 else torch.float64


def _norm(t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t.float() if t.element_size() < 4 else t)


class InputStats(NamedTuple):
    """What a layer receives, reduced: 0-d tensors, or host numbers where `host` allowed reading
    values (None: not measurable; 0: known to be 0)."""

    mean: Tensor
    centred: Tensor  # |x - mean(x)|: pooled with the mean into the std (Chan et al.)
    dead: Tensor  # units that are exactly 0 for every sample
    saturated: Tensor | int | None  # elements with phi' < SATURATION_FRACTION * max phi'
    deriv_norm: Tensor | None  # |phi'| over the elements (sigmoid, tanh, GELU, SiLU, ELU)
    deriv_sq: Tensor | None  # sum of phi'^2 over the elements (ReLU family: counted, no phi' tensor)


def input_stats(x: Tensor, source: Source | None, scratch: Scratch | None = None, host: bool = False) -> InputStats:
    """What a layer receives: moments, dead units, saturation and phi' of its producing activation.

    Units are all dimensions but the first (the batch); a unit is dead when it is exactly 0 for
    every sample. Saturation is the registry's test (Activation.saturated); the count is 0 for
    known non-saturating activations and None (unknown) when no activation was recognised, as
    is phi' when it cannot be had from the output or from autograd's saved input. Temporaries
    come from `scratch` when given (see scratch.py).

    host=True (CPU tensors: reading a value is no device sync) reads one small result to skip
    work whose answer it already gives, exactly: a saturation count is 0 without counting when
    the largest -phi' (tanh: the largest |x|, from the per-unit maxima) says phi' is nowhere
    below the threshold. Same numbers, fewer passes.
    """
    x = x.float() if x.element_size() < 4 else x  # half/bfloat16: reduce in float32
    flat = x if x.dim() == 2 else x.reshape(x.shape[0], -1) if x.dim() else x.reshape(1, 1)
    mean = flat.mean()
    centred = torch.linalg.vector_norm(torch.sub(flat, mean, out=_temp(flat, scratch)))  # two-pass: exact
    nonneg = source is not None and source.name in NONNEGATIVE  # no abs() pass needed
    unit_max = (flat if nonneg else torch.abs(flat, out=_temp(flat, scratch))).amax(0)  # per unit: max |x|
    dead = unit_max.eq(0).sum(dtype=torch.float32)  # float: stacks with the other values without a cast
    if source is None:
        return InputStats(mean, centred, dead, None, None, None)
    act = activations.get(source.name)
    if act.relu_family:
        return InputStats(mean, centred, dead, 0, None, relu_deriv_sq_sum(x, _slope(source), scratch))
    if act.deriv_from_output is not None:
        # the registry's test, Activation.saturated(x).sum(), with phi' computed once
        into = NEG_DERIV_INTO.get(source.name)
        neg_d = into(x, _temp(x, scratch)) if into is not None else act.deriv_from_output(x).neg_()
        norm = _norm(neg_d)  # before below_count consumes neg_d
        threshold = activations.SATURATION_FRACTION * act.max_deriv
        least = LEAST_DERIV_AT_MAX_ABS.get(source.name)
        if host and least is not None:  # NaN compares False: counted
            calm = bool(least(np.float32(float(unit_max.amax()))) >= np.float32(threshold))
        else:
            calm = host and float(neg_d.amax()) <= -float(np.float32(threshold))
        if calm:
            saturated: Tensor | int = 0  # phi' >= threshold everywhere (compared in float32, as the test)
        else:
            saturated = below_count(neg_d, threshold, act.max_deriv)
        return InputStats(mean, centred, dead, saturated, norm, None)
    if hasattr(source.node, "_saved_self"):  # phi' of the input autograd saved (GELU, SiLU, ELU)
        z = source.node._saved_self
        fused = FUSED_DERIV.get(source.name)
        d = fused(z, source.node, _temp(z, scratch)) if fused is not None else act.deriv(z, 0.0)
        return InputStats(mean, centred, dead, 0, _norm(d), None)
    return InputStats(mean, centred, dead, 0, None, None)


def below_count(neg_d: Tensor, threshold: float, top: float) -> Tensor:
    """Number of entries of d below threshold, given neg_d = -d with 0 <= d <= top (consumed).

    ceil(threshold - d) is exactly 1 where d < threshold and 0 elsewhere while threshold - d
    lies in (-1, 1); a wider range is scaled into it first (a positive factor keeps the sign,
    which decides). Three in-place float kernels (sub/clamp/sign/sum/neg took five); a boolean
    mask and its sum is ~3x slower here (this CPU build's bool kernels are not vectorised).
    """
    t = neg_d.add_(threshold)
    if top - threshold >= 1 or threshold >= 1:
        t.mul_(0.5 / max(top, threshold))
    return t.ceil_().sum(dtype=_count_dtype(t))


def output_stats(y: Tensor, scratch: Scratch | None = None, host: bool = False) -> tuple[Tensor, Tensor | int]:
    """(norm, count of NaN/Inf entries) of a layer's output.

    host=True (CPU): a finite norm means no NaN/Inf entry (either makes the norm non-finite):
    the count is 0 without counting; it is counted only when the norm is NaN or Inf.
    """
    y = y.float() if y.element_size() < 4 else y
    norm = torch.linalg.vector_norm(y)
    if host and math.isfinite(float(norm)):
        return norm, 0
    y_minus_y = torch.sub(y, y, out=_temp(y, scratch))  # 0 where finite, NaN elsewhere
    return norm, y_minus_y.nan_to_num_(nan=1.0).sum()


def nonfinite_count(t: Tensor) -> Tensor:
    """Number of NaN/Inf entries (0-d tensor)."""
    return torch.isfinite(t).logical_not_().sum()
