"""Pure: vanishing and exploding gradients through time in recurrent layers.

Bengio, Simard & Frasconi (1994): the gradient that reaches time step t from the loss at step
T is a product of T - t Jacobians W_hh^T diag(phi'(a_k)), so its norm shrinks (or grows)
geometrically with the distance, and long-range dependencies cannot be learnt. Judged on the
Trace series "time_input_grad" (||dL/dx_t|| per sample, the gradient each time step receives,
recurrent path included; see probe/recurrent.py): the log-mean over the first time steps
against the last ones, in decades, over the last half of the recorded steps.

Blind spot, by construction: with a loss at every time step (a language model), each step
receives its own direct gradient, so the profile stays flat even when the long-range part
vanishes; the rule then stays silent. Bidirectional layers mix both directions: not judged.
"""
from __future__ import annotations

import numpy as np

from . import thresholds as T
from .findings import Cause, Finding
from .signals import Signals, persistent, window
from .table import remedies_for

KINDS = ("vanishing_through_time", "exploding_through_time")
FLOOR = 1e-45  # smallest positive float32: an error signal that underflowed to 0 counts as this


def edge(length: int) -> int:
    """Time steps averaged at each end of a sequence of `length`."""
    return max(1, round(T.TIME_EDGE_FRACTION * length))


def decades(profile: np.ndarray) -> tuple[float, int]:
    """(log10 of the first steps' gradient over the last steps', time span between them) of one profile."""
    p = profile[np.isfinite(profile)]
    if len(p) < T.MIN_TIME_STEPS:
        return float("nan"), 0
    k = edge(len(p))
    lg = np.log10(np.maximum(p, FLOOR))
    return float(lg[:k].mean() - lg[-k:].mean()), len(p) - k


def _cause(kind: str, d: float, span: int, length: int, rtype: str) -> Cause:
    factor = 10 ** (d / span) if span else float("nan")
    chain = (f"over {length} time steps the gradient is a product of one Jacobian per step: each passes on "
             f"~{factor:.3g}x, which compounds to {10 ** d:.3g}x between the first and the last steps")
    if kind == KINDS[0]:
        fix = ("gated units (LSTM/GRU) carry it further" if rtype == "RNN" else
               "a forget-gate bias near 1 keeps an LSTM's cell gradient from halving each step "
               "(Jozefowicz et al. 2015)")
        how = f"; {fix}; an orthogonal or identity recurrent init (Le et al. 2015) or shorter sequences help"
    else:
        how = "; clipping the gradient norm bounds the step (Pascanu et al. 2013)"
    return Cause("recurrent_chain", chain + how, {"per_step_factor": factor, "time_steps": length}, 1.0)


def through_time(s: Signals) -> list[Finding]:
    """Error signal at the first time steps far below (vanishing) or above (exploding) the last ones."""
    out = []
    for layer, (_steps, values, rtype) in s.time.items():
        per_step = [decades(row) for row in values]
        d = np.array([x for x, _ in per_step])
        ok = np.flatnonzero(np.isfinite(d))
        if len(ok) == 0:
            continue
        judged = ok[window(len(ok))]
        med = float(np.median(d[judged]))
        span = int(np.median([per_step[i][1] for i in judged]))
        length = int(np.median([np.isfinite(values[i]).sum() for i in judged]))
        for kind, sign, limit in ((KINDS[0], -1, T.TIME_VANISH_DECADES), (KINDS[1], 1, T.TIME_EXPLODE_DECADES)):
            if not persistent(sign * d[judged] > limit) or not sign * med > limit:
                continue
            ratio = 10 ** med
            summary = (f"the gradient reaching the first time steps of '{layer}' is {ratio:.3g}x that at the "
                       f"last ones ({abs(med):.1f} decades over {length} steps, ~{10 ** (med / span):.3g}x per step)")
            evidence = {"layer": layer, "decades": med, "ratio_first_to_last": ratio, "time_steps": length,
                        "per_step_factor": 10 ** (med / span), "steps_judged": len(judged),
                        "underflow": bool((values[judged] <= FLOOR).any()),
                        "profile": [float(v) for v in np.nanmedian(values[judged], axis=0)[:: max(1, length // 10)]]}
            # severity by impact: gated units (LSTM, GRU) at init can open their gates and learn
            # long ranges (graddoctor.lab.rnn: a default-init LSTM at -29 decades learns T=100), so
            # without training evidence they are a warning; a plain RNN, or any after training, critical
            gated_at_init = rtype in ("LSTM", "GRU") and len(judged) == 1
            severity = "critical" if sign * med > T.TIME_CRITICAL_DECADES and not gated_at_init else "warning"
            cause = _cause(kind, med, span, length, rtype)
            # clipping bounds an explosion; it does not bring back a vanished gradient
            remedies = remedies_for([cause]) if kind == KINDS[1] else ()
            out.append(Finding(kind, severity, (layer,), summary, evidence, (cause,), remedies))
    return out
