"""Pure rules: each reads Signals and returns Findings (no hooks, no I/O).

A rule implements one check. Gradient verdicts are judged on the error signal relative to
the layer nearest the output, over the last half of the recorded (finite) steps, and must
persist (see signals.persistent).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import thresholds as T
from .causes import gradient_causes, rank
from .depth import along_depth, inside_branches, stacks
from .evidence import _finding, _finite_steps, _judged, _lr_cause, _q, appeared_in_training, input_scale_cause
from .findings import Cause, Finding
from .impact import converged, is_adaptive, judge_impact, optimizer_of
from .nonfinite import non_finite, precision_underflow
from .patterns import PATTERNS
from .signals import Signals, median, persistent
from .through_time import through_time

Rule = Callable[[Signals], list[Finding]]
RELU_FAMILY = frozenset({"relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "silu"})


def vanishing_exploding(s: Signals) -> list[Finding]:
    """Error signal far below (vanishing) or above (exploding) the layer nearest the output (chains of layers)."""
    judged = _judged(s)
    if len(judged) == 0 or len(s.body) < 2 or stacks(s):  # networks of blocks: depth.along_depth
        return []
    # attention internals (Q, K, V: patterns.attention_qk) and outputs shared by the batch
    # (a position embedding's (1, T, d)) are not on the chain; they are judged apart
    apart = s.structure.apart() if s.structure is not None else frozenset()
    body = np.array([i for i in s.body if i not in apart] or s.body)
    all_rel = s.rel.copy()
    all_rel[:, list(apart)] = np.nan
    rel = all_rel[judged][:, body]
    rel_med = median(all_rel, judged)
    out = []
    for kind, sign, limit in (("vanishing", -1, T.VANISH_DECADES), ("exploding", 1, T.EXPLODE_DECADES)):
        with np.errstate(invalid="ignore"):
            per_step = np.array([np.nanmax(r) > limit if np.isfinite(r).any() else False for r in sign * rel])
        if not persistent(per_step):
            continue
        first = _finite_steps(s)[0]
        onset = appeared_in_training(s, sign * all_rel[first][body], limit)
        body_rel = rel_med[s.body]
        affected = s.body[sign * body_rel > T.AFFECTED_DECADES]
        if len(affected) == 0:
            continue
        extreme = float(np.nanmax(sign * body_rel))
        transitions = np.arange(affected[0], s.ref)  # gains from the first affected layer up
        gains = median(s.log_gain, judged)
        acts, weights = median(s.log_act, judged), median(s.log_weight, judged)
        worst = int(transitions[np.nanargmax(sign * gains[transitions])]) if len(transitions) else int(affected[0])
        culprit = worst + 1 if np.nan_to_num(abs(weights[worst])) >= np.nan_to_num(abs(acts[worst])) else worst
        causes = gradient_causes(kind, transitions, gains, acts, weights, s.activations,
                                 median(s.layer["saturated"], judged), median(s.layer["dead"], judged),
                                 input_scale_cause(s), _lr_cause(s, judged, onset) if s.n_steps > 1 else None,
                                 s.names)
        first, last = s.names[affected[0]], s.names[affected[-1]]
        summary = (f"the error signal at '{first}' is {10 ** (sign * extreme):.3g}x that of {_q(s, s.ref)} "
                   f"(the last layer before the output); {len(affected)} layers affected ('{first}' .. '{last}'); "
                   f"the gain {'drops' if sign < 0 else 'jumps'} most between {_q(s, worst)} and "
                   f"{_q(s, worst + 1)} ({10 ** gains[worst]:.2g}x), at {_q(s, culprit)}: its "
                   f"{'weights' if culprit > worst else 'activation'}")
        evidence = {"decades": sign * extreme, "first_layer": first, "last_layer": last,
                    "worst_gain_layer": s.names[culprit], "worst_gain": float(10 ** gains[worst]),
                    "reference_layer": s.names[s.ref], "steps_judged": len(judged),
                    "signal_decades": {s.names[i]: float(rel_med[i]) for i in s.body}}
        sev = "critical" if extreme > T.CRITICAL_DECADES else "warning"
        growth = norm_growth(s, kind, affected, extreme)
        if growth is not None:
            out.append(_finding("by_design", "info", [], s, growth, {**evidence, "pattern": "norm_growth"}, []))
            continue
        f = _finding(kind, sev, affected, s, summary, evidence, causes)
        out.append(judge_impact(s, f, list(affected), judged) if kind == "vanishing" else f)
    return out


def norm_growth(s: Signals, kind: str, affected: np.ndarray, decades: float) -> str | None:
    """The summary of a normalisation growth within what trains, or None (chains of layers)."""
    if kind != "exploding" or s.structure is None:
        return None
    weights = [i for i in affected if s.structure.is_weight(i)]
    norms = [i for i in range(int(affected[0]), int(affected[-1]) + 2) if s.structure.is_norm(i)]
    per_layer = decades / max(len(weights), 1)
    if len(norms) < 0.8 * len(weights) or per_layer > T.NORM_GROWTH_PER_LAYER or decades > T.NORM_GROWTH_MAX_DECADES:
        return None
    return (f"normalisation growth: the error signal grows {10 ** decades:.3g}x towards the input over "
            f"{len(weights)} normalised layers (~{10 ** per_layer:.2g}x per layer), the growth of normalised "
            f"networks at init (Yang et al. 2019: sqrt(pi/(pi-1)) = 1.21x per BatchNorm-ReLU layer), within "
            f"{T.NORM_GROWTH_MAX_DECADES:g} decades that such networks train through")


def exploding_in_time(s: Signals) -> list[Finding]:
    """The gradient norm, or the weights themselves, grow by orders of magnitude while training."""
    judged = _judged(s)
    if s.n_steps < T.MIN_STEPS:
        return []
    cause = _lr_cause(s, judged)
    if cause is None:
        return []
    gn = s.step["global_grad_norm"]
    grads = cause.evidence["growth_decades"] > T.GROWTH_DECADES
    # weights that grow while the loss falls are learning (an LSTM at a high lr); growing while it
    # does not fall, the steps are too large
    loss = s.step["loss"][np.isfinite(s.step["loss"])]
    stuck = len(loss) >= T.MIN_STEPS and np.median(loss[-T.MIN_STEPS:]) >= T.LOSS_NOT_FALLING * loss[0]
    weights = cause.evidence["weight_growth_decades"] > T.WEIGHT_GROWTH_DECADES and stuck
    if not (grads or weights):
        return []
    metric = "grad_rms" if grads else "weight_rms"
    g = s.layer[metric]
    ok = np.isfinite(g).all(axis=1)
    idx = np.arange(len(s.names))
    limit = T.GROWTH_DECADES / 2 if grads else T.WEIGHT_GROWTH_DECADES
    if ok.sum() >= 2:
        rows = np.where(ok)[0]
        growth = np.log10(np.maximum(g[rows[-1]], 1e-300)) - np.log10(np.maximum(g[rows[0]], 1e-300))
        idx = np.where(growth > limit)[0] if (growth > limit).any() else idx
    if grads:
        summary = f"the gradient norm grew from {np.nanmin(gn):.3g} to {np.nanmax(gn):.3g} during training"
    else:  # Adam-type steps do not grow with the gradient: the weights carry the blow-up
        summary = (f"the weights grew {10 ** cause.evidence['weight_growth_decades']:.3g}x (median over layers) "
                   f"in {int(s.steps[-1] - s.steps[0])} steps while the loss did not fall ({loss[0]:.3g} -> "
                   f"{np.median(loss[-T.MIN_STEPS:]):.3g}): the optimizer's steps are too large for them")
    return [_finding("exploding", "critical" if grads else "warning", idx, s, summary, dict(cause.evidence),
                     [cause])]


def _over(s: Signals, metric: str, limit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(judged steps, per-layer median of a fraction metric, layers above `limit`)."""
    judged = _judged(s)
    frac = median(s.layer[metric], judged) if len(judged) else np.array([])
    return judged, frac, np.where(np.nan_to_num(frac) > limit)[0]


def _span(s: Signals, idx: np.ndarray) -> str:
    """The quoted first layer, or "'first' .. 'last'" for a run of layers."""
    return _q(s, idx[0]) + (f" .. {_q(s, idx[-1])}" if len(idx) > 1 else "")


def saturation(s: Signals) -> list[Finding]:
    """Sigmoid/tanh inputs stuck where the derivative is < 1% of its maximum."""
    judged, sat, idx = _over(s, "saturated", T.SATURATED_FRACTION)
    if len(idx) == 0:
        return []
    # the first hidden layer's activations are fed by the inputs: their scale is the first suspect
    causes = [c for c in (input_scale_cause(s),) if c is not None and idx[0] <= 1]
    first = np.nan_to_num(s.layer["saturated"][_finite_steps(s)[0]])
    if s.n_steps > 1 and not (first > T.SATURATED_FRACTION).any():  # it appeared while training
        causes += [c for c in (_lr_cause(s, judged, onset=True),) if c is not None]
    mean = float(np.mean(sat[idx]))
    causes.append(Cause("saturating_activation", f"{mean:.0%} of the units feeding {len(idx)} layer(s) sit "
                        "where the derivative is below 1% of its maximum", {"saturated": mean}, 1.0))
    std = median(s.layer["act_std"], judged)
    causes.append(Cause("init_too_large", "large pre-activations push the units to the flat ends",
                        {"input_std": float(np.nanmean(std[idx]))}, 0.5))
    return [_finding("saturation", "warning", idx, s,
                     f"{mean:.0%} of the activations feeding {_span(s, idx)} are saturated",
                     {"saturated": {s.names[i]: float(sat[i]) for i in idx}}, rank(causes))]


def dead_units(s: Signals) -> list[Finding]:
    """ReLU-family units that output zero for the whole batch."""
    judged, dead, idx = _over(s, "dead", T.DEAD_FRACTION)
    # only inputs that a ReLU-family activation produced: zeros from padding, masks or pooling
    # (a depthwise convolution's zero-padded input) are structure, not dead units
    idx = np.array([i for i in idx if s.activations[i] in RELU_FAMILY], dtype=int)
    if len(idx) == 0:
        return []
    mean = float(np.mean(dead[idx]))
    causes = [Cause("dead_relu", f"{mean:.0%} of the units feeding these layers never fire: no gradient "
                    "passes through them", {"dead": mean}, 1.0)]
    causes += [c for c in (_lr_cause(s, judged) if s.n_steps > 1 else None,) if c is not None]
    return [_finding("dead_units", "critical" if mean > 0.9 else "warning", idx, s,
                     f"{mean:.0%} of the units feeding {_span(s, idx)} are dead (zero for every sample)",
                     {"dead": {s.names[i]: float(dead[i]) for i in idx}}, rank(causes))]


def stalled_layers(s: Signals) -> list[Finding]:
    """Layers whose weights barely move (update/weight ratio far too small)."""
    judged = _judged(s)
    ur = median(s.layer["update_ratio"], judged) if len(judged) else np.array([])
    if not np.isfinite(ur).any():
        return []
    if converged(s, judged):
        return []  # converged: small steps are what a finished fit takes, not a stall
    g = median(s.layer["grad_rms"], judged)
    trainable = np.isfinite(ur) & np.isfinite(g)  # frozen layers: nan gradients
    opt = optimizer_of(s)
    eps = float(opt.get("eps", 1e-8)) if is_adaptive(opt) else None
    # under Adam-type optimizers the step does not shrink with the gradient unless it is below eps
    # (an exactly-zero gradient is a layer the loss does not reach, patterns.disconnected)
    below_eps = trainable & (g > 0) & (g < T.ADAM_EPS_FACTOR * eps) if eps is not None else np.zeros(len(ur), bool)
    rest = float(np.nanmedian(ur[trainable])) if trainable.any() else np.nan
    slow = below_eps & (ur < T.RELATIVE_UPDATE_EPS * rest)  # the step measured is small too
    idx = np.where(trainable & ((ur < T.UPDATE_RATIO_LOW) | slow))[0]
    if len(idx) == 0:
        return []
    all_stall = len(idx) == trainable.sum()
    if slow[idx].any():
        why = (f"their gradient RMS {np.nanmedian(g[idx]):.2g} is below {T.ADAM_EPS_FACTOR:g}x {opt.get('type')}'s "
               f"eps {eps:.0e}, so their steps shrink by g/eps")
    else:
        why = ("every layer's steps are tiny" if all_stall else
               "the error signal reaching them is too small (the product of the layers above)")
    causes = [Cause("learning_rate_too_low" if all_stall and not slow[idx].any() else "chain_product_depth",
                    f"{why}: median update/weight ratio {np.nanmedian(ur[idx]):.2g} (healthy ~1e-3)",
                    {"update_ratio": float(np.nanmedian(ur[idx])), "grad_rms": float(np.nanmedian(g[idx])),
                     "eps": eps}, 1.0)]
    summary = f"{len(idx)} layers barely change: update/weight ratio {np.nanmedian(ur[idx]):.2g}; {why}"
    return [_finding("stalled_layers", "warning", idx, s, summary,
                     {"update_ratio": {s.names[i]: float(ur[i]) for i in idx}}, causes)]


def no_gradient(s: Signals) -> list[Finding]:
    """Most layers, the reference among them, get exactly zero error signal: the forward signal died."""
    judged = _judged(s)
    if not len(judged):
        return []
    zero = (s.log_rms[judged] < -250).all(axis=0)  # exactly 0 on every judged step (log floor -300)
    if zero.sum() < 0.5 * len(s.names) or not zero[s.ref]:
        return []  # a gradient that is small but not zero is the relative rules' business
    if int(s.steps[judged[0]]) == 0 and (s.layer["weight_rms"][judged[0]] == 0).any():
        return []  # a zero-initialised layer at step 0 (patterns.zero_init)
    idx = np.flatnonzero(zero)
    out = median(s.layer["out_rms"], judged)
    dead = np.flatnonzero(np.nan_to_num(out, nan=1.0) <= 1e-30)
    where = (f"; the forward signal dies on the way: the output RMS of '{s.names[dead[0]]}' is "
             f"{out[dead[0]]:.3g}" if len(dead) else "")
    gains = []
    rms_in = np.sqrt(median(s.layer["act_std"], judged) ** 2 + median(s.layer["act_mean"], judged) ** 2)
    with np.errstate(all="ignore"):
        g = np.log10(out / rms_in)
    if s.structure is not None:
        gains = [g[i] for i in range(len(s.names)) if s.structure.is_weight(i) and np.isfinite(g[i])]
    gain = float(np.median(gains)) if gains else float("nan")
    ratio = f" (median output/input RMS of the weight layers {10 ** gain:.2g}x)" if np.isfinite(gain) else ""
    causes = [Cause("init_too_small", "the weights shrink the forward signal until it is exactly zero" + ratio,
                    {"forward_gain": 10 ** gain if np.isfinite(gain) else None}, 2.0),
              Cause("chain_product_depth", f"{len(idx)} layers in a row pass nothing on", {"layers": len(idx)}, 1.0)]
    summary = f"no gradient reaches {len(idx)} of {len(s.names)} layers (their error signal is exactly 0){where}"
    return [_finding("vanishing", "critical", idx, s, summary,
                     {"decades": float("-inf"), "zero_layers": len(idx), "first_layer": s.names[idx[0]],
                      "worst_gain_layer": s.names[dead[0]] if len(dead) else s.names[idx[0]]}, rank(causes))]


RULES: tuple[Rule, ...] = (non_finite, no_gradient, vanishing_exploding, along_depth, inside_branches,
                           exploding_in_time, saturation, dead_units, stalled_layers, through_time,
                           precision_underflow, *PATTERNS)
