"""Pure: does a gradient finding hurt, for the optimizer in use? (issue 14, point 3)

A small gradient is a vanishing gradient only if the layers that get it stop learning. Under
SGD the step is proportional to the gradient, so a small gradient is a small step; under
Adam/AdamW the step is lr * m / (sqrt(v) + eps): the gradient's size cancels, unless it is
below `eps` (then the step shrinks in proportion). The evidence is measured, not assumed: the
affected layers' update/weight ratio against the rest of the network, and their gradient RMS
against Adam's eps (trace.meta["optimizer"], recorded by the probe when an optimizer is bound).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from . import thresholds as T
from .findings import Finding
from .signals import Signals, median


def optimizer_of(s: Signals) -> dict:
    """{"type", "lr", "eps", ...} of the bound optimizer ({} when none was bound)."""
    opt = s.meta.get("optimizer")
    if isinstance(opt, str):  # older traces: the class name only
        return {"type": opt}
    return dict(opt or {})


def is_adaptive(opt: dict) -> bool:
    """Adam, AdamW, RMSprop, Adagrad ...: the step is divided by a running gradient scale."""
    return any(k in str(opt.get("type", "")) for k in ("Adam", "RMSprop", "Adagrad", "Adafactor", "Lion"))


def converged(s: Signals, judged: np.ndarray) -> bool:
    """True when the judged steps' loss is below CONVERGED_LOSS_FRACTION of the first: a finished fit."""
    loss = s.step["loss"]
    first = loss[np.isfinite(loss)][:1]
    now = np.nanmedian(loss[judged]) if len(judged) and np.isfinite(loss[judged]).any() else np.nan
    return bool(len(first) and np.isfinite(now) and now < T.CONVERGED_LOSS_FRACTION * first[0])


def learning(s: Signals, layers: list[int], judged: np.ndarray) -> dict | None:
    """Whether `layers` learn: their update ratio vs the rest, gradient vs eps; None without updates."""
    if not len(judged) or not layers:
        return None
    ur = median(s.layer["update_ratio"], judged)
    mine = ur[layers]
    mine = mine[np.isfinite(mine)]
    others = np.array([ur[i] for i in range(len(ur)) if i not in set(layers) and np.isfinite(ur[i])])
    if not len(mine) or not len(others):
        return None
    opt = optimizer_of(s)
    g = median(s.layer["grad_rms"], judged)[layers]
    g = g[np.isfinite(g)]
    grad = float(np.median(g)) if len(g) else float("nan")
    eps = float(opt.get("eps", 1e-8)) if is_adaptive(opt) else None
    ratio = float(np.median(mine) / max(np.median(others), 1e-300))
    below_eps = bool(eps is not None and np.isfinite(grad) and grad < T.ADAM_EPS_FACTOR * eps)
    # weight decay alone moves weights by lr * weight_decay per step: no gradient step in that
    decay = float(opt.get("lr", 0) or 0) * float(opt.get("weight_decay", 0) or 0)
    decay_only = bool(grad == 0 or (decay > 0 and np.median(mine) <= 2 * decay))
    # steps too small to change the weights in a million steps are a stall, whatever the rest does
    # (a 20-layer tanh net at tiny init: every layer's update/weight ~1e-23, the rest's no larger)
    tiny = bool(np.median(mine) < T.UPDATE_RATIO_LOW and not converged(s, judged))
    # a gradient below eps shrinks Adam's step only when the step measured is small too
    stalled = decay_only or tiny or ratio < T.RELATIVE_UPDATE_LOW or (below_eps and ratio < T.RELATIVE_UPDATE_EPS)
    return {"learns": not stalled, "update_ratio": float(np.median(mine)), "tiny": tiny,
            "update_ratio_rest": float(np.median(others)), "relative_update": ratio, "grad_rms": grad, "eps": eps,
            "below_eps": below_eps, "decay_only": decay_only,
            "optimizer": opt.get("type")}


def judge_impact(s: Signals, finding: Finding, layers: list[int], judged: np.ndarray) -> Finding:
    """The finding with its impact: demoted to info, with the evidence, when its layers still learn."""
    ev = learning(s, layers, judged)
    if ev is None:
        return finding
    evidence = {**finding.evidence, "impact": ev}
    if not ev["learns"]:
        why = ("no gradient step moves them (their gradient is 0, or only weight decay changes them)"
               if ev["decay_only"] else
               f"their update/weight ratio {ev['update_ratio']:.2g} is below {T.UPDATE_RATIO_LOW:g}: a million steps "
               f"would not change their weights by their own size" if ev["tiny"] else
               f"their gradient RMS {ev['grad_rms']:.2g} is below {T.ADAM_EPS_FACTOR:g}x {ev['optimizer']}'s eps "
               f"{ev['eps']:.0e}, so their steps shrink" if ev["below_eps"] else
               f"they move {ev['relative_update']:.2g}x as much as the rest of the network "
               f"(update/weight {ev['update_ratio']:.2g} vs {ev['update_ratio_rest']:.2g})")
        return replace(finding, summary=f"{finding.summary}; they stop learning: {why}", evidence=evidence)
    opt = ev["optimizer"] or "the optimizer"
    return replace(finding, severity="info", evidence=evidence, causes=(), remedies=(), summary=(
        f"{finding.summary}; but under {opt} they learn: update/weight {ev['update_ratio']:.2g} vs "
        f"{ev['update_ratio_rest']:.2g} for the rest" + _eps_note(ev)))


def _eps_note(ev: dict) -> str:
    """How the gradient compares with Adam's eps, as the measured numbers say (empty for other optimizers)."""
    if ev["eps"] is None or not np.isfinite(ev["grad_rms"]):
        return ""
    if ev["below_eps"]:  # their steps are as large as the rest's: the rest moves as little (see stalled_layers)
        return (f"; their gradient RMS {ev['grad_rms']:.2g} is below {T.ADAM_EPS_FACTOR:g}x eps {ev['eps']:.0e}, "
                "so their steps are only as large as the rest's")
    return f", gradient RMS {ev['grad_rms']:.2g} above eps {ev['eps']:.0e}"
