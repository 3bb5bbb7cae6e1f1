"""Pure: rank the causes of a gradient finding from the chain-rule split of each layer's gain.

Each layer's gain ||delta_l|| / ||delta_{l+1}|| is measured as the product of two parts:
the weight part (layer l+1's backward through its weights, ||dL/d input|| / ||dL/d output||)
and the activation-derivative part (what phi' keeps of it). Summed in decades over the
affected layers they say *why* the signal shrinks or grows: a saturating derivative, weights
too small or too large — or merely many factors slightly off 1 (depth).
"""
from __future__ import annotations

import functools

import numpy as np

from ..activations import ACTIVATIONS
from . import thresholds as T
from .findings import Cause

SATURATING = ("sigmoid", "tanh")


@functools.cache
def expected_log_act(activation: str | None) -> float:
    """log10 of the activation factor a well-initialised net expects (and its init compensates).

    ReLU halves the squared signal (factor 1/sqrt(2)) and He's gain sqrt(2) makes up for it, so
    that part is structural, not a cause: it is sqrt(E[phi'(z)^2]) at unit-variance Gaussian
    pre-activations. Sigmoid and tanh are held to slope 1 (their linear regime): their
    attenuation *is* the saturating-activation cause.
    """
    if activation is None or activation in SATURATING or activation not in ACTIVATIONS:
        return 0.0
    from ..theory import chi

    return 0.5 * float(np.log10(chi(activation, 1.0, 1.0)))


def rank(causes: list[Cause]) -> list[Cause]:
    """Highest score first; drop non-positive scores."""
    return sorted((c for c in causes if c.score > 0), key=lambda c: -c.score)


def _x(decades: float) -> str:
    return f"{10 ** decades:.2g}x"


def _where_weights(w: np.ndarray, kept: np.ndarray, names: list[str], limit: float, verb: str) -> str:
    """'the weights shrink the signal at every layer', or name the one layer that does most of it."""
    bad = w[w < limit] if verb == "shrink" else w[w > limit]
    j = int(np.argmin(w) if verb == "shrink" else np.argmax(w))
    if abs(w[j]) > 0.5 * abs(float(np.sum(bad))):
        return f"the weights of '{names[kept[j] + 1]}' alone {verb} it {_x(w[j])}"
    return f"the weights {verb} the signal at every layer"


def gradient_causes(direction: str, idx: np.ndarray, log_gain: np.ndarray, log_act: np.ndarray,
                    log_weight: np.ndarray, activations: list[str | None], saturated: np.ndarray,
                    dead: np.ndarray, input_scale: Cause | None, in_training: Cause | None,
                    names: list[str]) -> list[Cause]:
    """Ranked causes of a vanishing (direction 'vanishing') or exploding run of layers `idx`."""
    sign = -1.0 if direction == "vanishing" else 1.0
    g, a, w = log_gain[idx], log_act[idx], log_weight[idx]
    if np.all(np.isnan(a)):  # no input gradients recorded: the weight part is the rest
        a = np.zeros_like(g)
        w = g.copy()
    a0 = np.array([expected_log_act(activations[i + 1] if i + 1 < len(activations) else None) for i in idx])
    a, w = a - a0, w + a0  # the structural part of the activation factor belongs to the init
    ok = np.isfinite(g) & np.isfinite(a) & np.isfinite(w)
    g, a, w, kept = g[ok], a[ok], w[ok], np.asarray(idx)[ok]
    n = len(g)
    total = float(np.sum(g)) if n else 0.0
    span = f"'{names[idx[0]]}' .. '{names[idx[-1]]}'" if len(idx) else "-"
    mg, ma, mw = (float(np.mean(v)) if n else 0.0 for v in (g, a, w))
    acts = {activations[i + 1] for i in idx if i + 1 < len(activations) and activations[i + 1]}
    act_name = "/".join(sorted(acts)) or "activation"
    ev = {"layers": n, "span": span, "mean_gain": 10 ** mg, "activation_factor": 10 ** ma,
          "weight_factor": 10 ** mw, "total_decades": total}
    split = (f"layers {span} each pass on ~{_x(mg)} of the error signal; the {act_name} "
             f"derivative contributes {_x(ma)}, the weights {_x(mw)}")
    out: list[Cause] = []
    sat = float(np.nanmean(saturated[idx])) if len(idx) and np.isfinite(saturated[idx]).any() else 0.0
    if direction == "vanishing" and ma < np.log10(T.FACTOR_LOW) and acts & set(SATURATING):
        why = (f"{sat:.0%} of the units saturated" if sat > 0.05 else
               "sigmoid' is at most 0.25" if "sigmoid" in acts else "tanh' < 1 away from 0")
        out.append(Cause("saturating_activation", f"{split} ({why})",
                         {**ev, "saturated": sat}, -float(np.sum(a))))
    lo, hi = np.log10(T.FACTOR_LOW), np.log10(T.FACTOR_HIGH)
    if direction == "vanishing" and n and (mw < lo or w.min() < np.log10(T.FACTOR_ONE_LAYER_LOW)):
        out.append(Cause("init_too_small", f"{split}: {_where_weights(w, kept, names, lo, 'shrink')}",
                         ev, -float(np.sum(w[w < lo]))))
    if n and (mw > hi or w.max() > np.log10(T.FACTOR_ONE_LAYER_HIGH)):
        if direction == "exploding":
            out.append(Cause("init_too_large", f"{split}: {_where_weights(w, kept, names, hi, 'amplify')}",
                             ev, float(np.sum(w[w > hi]))))
        elif sat > T.SATURATED_FRACTION:
            out.append(Cause("init_too_large", f"{split}; large weights drive {sat:.0%} of the units "
                             "into saturation", {**ev, "saturated": sat}, sat * -float(np.sum(a))))
    dead_frac = float(np.nanmean(dead[idx])) if len(idx) and np.isfinite(dead[idx]).any() else 0.0
    if direction == "vanishing" and dead_frac > T.DEAD_FRACTION:
        out.append(Cause("dead_relu", f"{dead_frac:.0%} of the units in {span} are zero for the whole "
                         "batch and pass no gradient", {**ev, "dead": dead_frac}, dead_frac * -total))
    if n >= T.DEEP_LAYERS:
        out.append(Cause("chain_product_depth",
                         f"{n} per-layer factors of ~{_x(mg)} multiply to {_x(total)}",
                         ev, T.DEPTH_SHARE * sign * total))
    for extra in (input_scale, in_training):
        if extra is not None:
            out.append(extra)
    return rank(out)
