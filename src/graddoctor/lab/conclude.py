"""Pure: measured numbers -> each experiment's conclusion (text written from the numbers).

A Conclusion says whether the measurements support the claim; when they do not, its text
says so and which number disagrees. Nothing here trains or reads files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import activations
from ..diagnose import thresholds as T
from .summary import RunSummary

# A run "trains" when it reaches this validation accuracy on digits (10 classes, chance 0.1;
# the healthy 20-layer nets here reach 0.93-0.97 in the quick budget).
TRAINS_ACC = 0.8
# Accuracy lost between the shallowest and the deepest net that counts as degradation.
DEGRADE = 0.1
# Per-layer decay (decades per layer, least squares over depths) that counts as exponential
# decay with depth: sigmoid+Xavier measures about -0.6, ReLU+He about 0.
SLOPE = 0.2
# Theory and measurement agree when within this many decades (width 64-128 measures 0.1-0.3).
THEORY_TOL = 1.0
# glorot2010: the top hidden sigmoid layer "is driven towards zero" when its mean output falls
# below this (it starts at 0.5) while the layers below stay near 0.5 (Glorot & Bengio 2010, fig. 2).
TOP_LOW = 0.25
# ... and "recovers" when its mean rises by this much from its minimum while the loss halves.
RECOVER = 0.05
# he2015: steps to halve the training loss, smoothed over this many steps.
SMOOTH = 25
# The diagnosis floors an exactly-zero signal at 1e-300 (diagnose.signals): a ratio below this
# many decades means the first layer's error signal is 0 (e.g. tanh saturated in float64).
ZERO_DECADES = -250.0
VANISH = T.VANISH_DECADES  # the diagnosis's threshold: more than 2 decades is vanishing/exploding


@dataclass
class Conclusion:
    """Whether the numbers support the claim, a paragraph that says why, extra table columns."""

    holds: bool
    text: str
    columns: dict[str, list[str]] = field(default_factory=dict)  # header -> one cell per run


def dec(v: float) -> str:
    """Decades with a sign: '+1.4', '-12.0', 'zero' (the first layer's signal is exactly 0), 'n/a'."""
    if not math.isfinite(v):
        return "n/a"
    return "zero" if v < ZERO_DECADES else f"{v:+.1f}"


def acc(v: float) -> str:
    """An accuracy, or 'n/a'."""
    return f"{v:.2f}" if math.isfinite(v) else "n/a"


def by(runs: list[RunSummary], **coords: str) -> list[RunSummary]:
    """The runs at these grid coordinates."""
    return [r for r in runs if all(r.coords.get(k) == v for k, v in coords.items())]


def one(runs: list[RunSummary], **coords: str) -> RunSummary | None:
    """The first run at these coordinates, or None."""
    found = by(runs, **coords)
    return found[0] if found else None


def values(runs: list[RunSummary], axis: str) -> list[str]:
    """The point labels on one axis, in grid order."""
    return list(dict.fromkeys(r.coords[axis] for r in runs if axis in r.coords))


def said(holds: bool, text: str) -> str:
    """The paragraph, opening with whether the claim is supported."""
    return ("**Supported.** " if holds else "**Not supported by these measurements.** ") + text


def trains(r: RunSummary) -> bool:
    """The run reached TRAINS_ACC validation accuracy."""
    return r.val_acc >= TRAINS_ACC


def activations_(runs: list[RunSummary]) -> Conclusion:
    """`activations`: sigmoid vanishes and fails; the non-saturating ones keep the signal and train."""
    sat = [r for r in runs if activations.get(r.coords["net"]).saturating]
    rest = [r for r in runs if r not in sat]
    vanished = [r for r in sat if r.decades_init < -VANISH and not trains(r)]
    kept = [r for r in rest if abs(r.decades_init) <= VANISH and trains(r)]
    holds = bool(vanished) and len(kept) == len(rest)
    sat_kept = [r for r in sat if r not in vanished]
    text = (f"Measured at init, the error signal at layer 1 sits {', '.join(f'{r.label} {dec(r.decades_init)}' for r in runs)} "
            f"decades from the last hidden layer. "
            + (f"{', '.join(r.label for r in vanished)} vanished (beyond {VANISH:g} decades) and stayed at "
               f"{', '.join(acc(r.val_acc) for r in vanished)} accuracy; " if vanished else "no saturating net vanished; ")
            + f"{len(kept)} of {len(rest)} non-saturating nets kept the signal within {VANISH:g} decades and trained "
            f"(accuracy {min((r.val_acc for r in rest), default=math.nan):.2f}-{max((r.val_acc for r in rest), default=math.nan):.2f}). "
            + (f"Saturating is not enough by itself: {', '.join(f'{r.label} ({dec(r.decades_init)}, accuracy {acc(r.val_acc)})' for r in sat_kept)} "
               "kept its gradient with Xavier init, whose inputs stay in tanh's linear range." if sat_kept else "")).strip()
    return Conclusion(holds, said(holds, text))


def _slope(rs: list[RunSummary]) -> float:
    d = np.array([r.depth for r in rs], float)
    y = np.array([r.decades_init for r in rs], float)
    ok = np.isfinite(y)
    return float(np.polyfit(d[ok] - 1, y[ok], 1)[0]) if ok.sum() >= 2 else math.nan


def depth(runs: list[RunSummary]) -> Conclusion:
    """`depth`: the saturating net decays exponentially with depth (a slope), ReLU+He does not."""
    parts, holds = [], True
    for net in values(runs, "net"):
        rs = sorted(by(runs, net=net), key=lambda r: r.depth)
        slope = _slope(rs)
        saturating = activations.get(net).saturating
        ok = (slope < -SLOPE and rs[-1].decades_init < -VANISH) if saturating else \
            (abs(slope) < SLOPE and all(abs(r.decades_init) <= VANISH for r in rs))
        holds &= ok
        parts.append(f"{net}: {slope:+.2f} decades per layer ({', '.join(f'depth {r.depth} {dec(r.decades_init)}' for r in rs)}); "
                     f"accuracy {', '.join(acc(r.val_acc) for r in rs)}")
        if not saturating and rs[-1].val_acc < rs[0].val_acc - DEGRADE and abs(rs[-1].decades_init) <= VANISH:
            parts.append(f"{net} at depth {rs[-1].depth} trains worse ({acc(rs[-1].val_acc)}) with a healthy "
                         "gradient ratio: depth costs more than gradient flow (see `residual`)")
    text = "Gradient ratio at init (layer 1 vs the last hidden layer) against depth. " + ". ".join(parts) + "."
    return Conclusion(holds, said(holds, text))


def init(runs: list[RunSummary]) -> Conclusion:
    """`init`: small vanishes, large explodes, Xavier/He keep it, the theory predicts all of it."""
    pred = [r.extra.get("predicted", math.nan) for r in runs]
    gap = [abs(r.decades_init - p) for r, p in zip(runs, pred) if math.isfinite(p) and math.isfinite(r.decades_init)]
    worst = max(gap, default=math.nan)
    bad_small = [r for r in by(runs, init="small") if r.decades_init >= -VANISH]
    bad_large = [r for r in by(runs, init="large") if r.decades_init <= VANISH]
    proper = [one(runs, activation="tanh", init="xavier_normal"), one(runs, activation="relu", init="he_normal")]
    bad_proper = [r for r in proper if r is not None and (abs(r.decades_init) > VANISH or not trains(r))]
    holds = not bad_small and not bad_large and not bad_proper and worst <= THEORY_TOL
    rows = "; ".join(f"{r.label} {dec(r.decades_init)} (theory {dec(p)})" for r, p in zip(runs, pred))
    text = (f"Measured (theory) decades at init: {rows}. The theory is within {worst:.2f} decades of every "
            f"measurement (tolerance {THEORY_TOL:g}). "
            + ("Small init vanishes and large init explodes for both activations; " if not (bad_small or bad_large)
               else f"Against the claim: {', '.join(r.label for r in bad_small + bad_large)} stayed within {VANISH:g} decades. ")
            + ("Xavier (tanh) and He (ReLU) keep the signal within " f"{VANISH:g} decades and train." if not bad_proper
               else f"Against the claim: {', '.join(r.label for r in bad_proper)} did not keep the signal or did not train."))
    return Conclusion(holds, said(holds, text),
                      {"theory (decades)": [dec(p) for p in pred]})


def batchnorm(runs: list[RunSummary]) -> Conclusion:
    """`batchnorm`: BN turns the vanishing deep sigmoid net into one that trains."""
    plain, bn = one(runs, net="sigmoid", bn="plain"), one(runs, net="sigmoid", bn="BN")
    holds = bool(plain and bn and plain.decades_init < -VANISH and not trains(plain)
                 and abs(bn.decades_init) <= VANISH and trains(bn))
    text = (f"Sigmoid without BN: {dec(plain.decades_init)} decades at init, accuracy {acc(plain.val_acc)}; "
            f"with BN: {dec(bn.decades_init)} decades, accuracy {acc(bn.val_acc)}. " if plain and bn else "")
    relu_bn = one(runs, net="relu", bn="BN")
    if relu_bn is not None:
        text += (f"BatchNorm is not neutral for ReLU: the plain BN-ReLU stack's error signal grows "
                 f"{relu_bn.per_layer_init:.2f}x per layer at init ({dec(relu_bn.decades_init)} decades over "
                 f"{relu_bn.depth} layers; Yang et al. 2019 predict 1.21x), a mild explosion that the "
                 f"diagnosis flags beyond {VANISH:g} decades; after training it is {dec(relu_bn.decades_trained)}.")
    return Conclusion(holds, said(holds, text))
