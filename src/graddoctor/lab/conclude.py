"""Pure: measured numbers -> the conclusions about signal propagation at initialisation.

Each function takes every seed's RunSummaries and returns a Conclusion: the claim's checks
evaluated seed by seed (claims.conclude), then sentences chosen by conditions on the numbers,
each number written as its range over the seeds. Nothing here trains or reads files.
"""
from __future__ import annotations

import math

import numpy as np

from .. import activations
from .claims import (
    DEGRADE,
    LINEAR,
    MATCH,
    SLOPE,
    THEORY_TOL,
    TRAINS_ACC,
    VANISH,
    YANG_RELU_BN,
    Conclusion,
    conclude,
    trains,
    vanished,
    within,
)
from .points import ZERO_DECADES as ZERO_DECADES  # re-exported: panels draws 'zero' ratios apart
from .points import Point, acc, by, dec, one, points, span, values
from .summary import RunSummary

__all__ = ["Conclusion", "acc", "activations_", "batchnorm", "dec", "depth", "init"]


def _names(labels) -> str:
    return ", ".join(labels) or "none"


def every(runs: list, pred) -> bool:
    """There are runs and pred holds for each (an empty selection is a failed check, not a pass)."""
    return bool(runs) and all(pred(r) for r in runs)


def activations_(runs: list[RunSummary]) -> Conclusion:
    """`activations`: a saturating net vanishes and fails; the non-saturating ones keep the signal and train."""
    pts = points(runs)
    sat = [p for p in pts if activations.get(p.coords["net"]).saturating]
    rest = [p for p in pts if p not in sat]
    is_sat = lambda r: activations.get(r.coords["net"]).saturating
    checks = [
        (f"a saturating activation ({_names(p.label for p in sat)}) has its layer-1 error signal more than "
         f"{VANISH:g} decades below the last hidden layer's at init and stays below {TRAINS_ACC:g} accuracy",
         lambda rs: any(vanished(r) and not trains(r) for r in rs if is_sat(r))),
        (f"every non-saturating activation ({_names(p.label for p in rest)}) stays within {VANISH:g} decades "
         f"and reaches {TRAINS_ACC:g}", lambda rs: all(within(r.decades_init) and trains(r) for r in rs
                                                       if not is_sat(r))),
    ]
    lost = [p for p in sat if all(vanished(r) for r in p.runs)]
    kept = [p for p in sat if p not in lost and all(within(r.decades_init) for r in p.runs)]
    says = [
        "Decades at init, over the seeds: " + "; ".join(f"{p.label} {span(p.get('decades_init'))}" for p in pts)
        + (f". Non-saturating nets reach accuracy {span(np.concatenate([p.get('val_acc') for p in rest]), acc)}."
           if rest else "."),
    ]
    for p in lost:  # how much of the decay the activation's derivative accounts for, per layer
        match = all(abs(math.log10(r.per_layer_init / r.deriv_rms_init)) <= MATCH for r in p.runs)
        says.append(f"{p.label} loses {span(p.get('per_layer_init'), _x)} per layer at init and the RMS of its "
                    f"derivative over its units is {span(p.get('deriv_rms_init'), _2)} (at most "
                    f"{activations.get(p.coords['net']).max_deriv:g})"
                    + (": the derivative accounts for the loss per layer." if match else "."))
    for p in kept:
        act = activations.get(p.coords["net"])
        linear = all(r.deriv_rms_init >= LINEAR * act.max_deriv for r in p.runs)
        says.append(f"Saturating is not enough by itself: {p.label} (init {p.runs[0].extra.get('init', '?')}) "
                    f"kept its signal ({span(p.get('decades_init'))}) and trained to "
                    f"{span(p.get('val_acc'), acc)}"
                    + (f"; the RMS of its derivative at init is {span(p.get('deriv_rms_init'), _2)} of a "
                       f"maximum {act.max_deriv:g}: its units work near their linear range." if linear else "."))
    return conclude(runs, checks, says)


def _x(v: float) -> str:
    return f"{v:.2f}x" if math.isfinite(v) else "n/a"


def _2(v: float) -> str:
    return f"{v:.2f}" if math.isfinite(v) else "n/a"


def slope(rs: list[RunSummary]) -> float:
    """Least-squares decades per layer of the ratio at init over depth (one seed's runs of one net)."""
    d = np.array([r.depth for r in rs], float)
    y = np.array([r.decades_init for r in rs], float)
    ok = np.isfinite(y)
    return float(np.polyfit(d[ok] - 1, y[ok], 1)[0]) if ok.sum() >= 2 else math.nan


def _slopes(runs: list[RunSummary], net: str) -> dict[int, float]:
    seeds: dict[int, list[RunSummary]] = {}
    for r in by(runs, net=net):
        seeds.setdefault(r.seed, []).append(r)
    return {s: slope(rs) for s, rs in seeds.items()}


def depth(runs: list[RunSummary]) -> Conclusion:
    """`depth`: the saturating net decays exponentially with depth (a slope), ReLU+He does not."""
    nets = values(runs, "net")
    sat = [n for n in nets if activations.get(n).saturating]
    checks = []
    for net in nets:
        if net in sat:
            checks.append((f"{net}'s ratio falls faster than {SLOPE:g} decades per layer and is below "
                           f"-{VANISH:g} at the deepest net",
                           lambda rs, net=net: slope(by(rs, net=net)) < -SLOPE
                           and vanished(max(by(rs, net=net), key=lambda r: r.depth))))
        else:
            checks.append((f"{net}'s slope is within ±{SLOPE:g} decades per layer and every depth stays within "
                           f"{VANISH:g} decades", lambda rs, net=net: abs(slope(by(rs, net=net))) < SLOPE
                           and all(within(r.decades_init) for r in by(rs, net=net))))
    says = []
    for net in nets:
        pts = sorted((p for p in points(runs) if p.coords["net"] == net), key=lambda p: p.depth)
        ratios = ", ".join(f"depth {p.depth} {span(p.get('decades_init'))}" for p in pts)
        says.append(f"{net}: {span(list(_slopes(runs, net).values()), lambda v: f'{v:+.2f}')} decades per layer "
                    f"({ratios}); accuracy {', '.join(span(p.get('val_acc'), acc) for p in pts)}.")
        if net not in sat and len(pts) >= 2:  # depth costing accuracy although the gradient flows
            deep, shallow = pts[-1], pts[0]
            worse = [r.seed for r, s in zip(deep.runs, shallow.runs)
                     if r.val_acc < s.val_acc - DEGRADE and within(r.decades_init)]
            if worse:
                says.append(f"{net} at depth {deep.depth} trains worse than at depth {shallow.depth} with a "
                            f"ratio at init within {VANISH:g} decades on {len(worse)}/{len(deep.runs)} seeds "
                            f"(accuracy {span(deep.get('val_acc'), acc)}).")
    return conclude(runs, checks, says)


def _predicted(r: RunSummary) -> float:
    return r.extra.get("predicted", math.nan)


def init(runs: list[RunSummary]) -> Conclusion:
    """`init`: small vanishes, large explodes, Xavier/He keep it, the theory predicts all of it."""
    acts = values(runs, "activation")
    proper = {"tanh": "xavier_normal", "relu": "he_normal"}
    gap = lambda r: abs(r.decades_init - _predicted(r))
    checks = [
        (f"small init vanishes (below -{VANISH:g} decades at init) for {_names(acts)}",
         lambda rs: every(by(rs, init="small"), vanished)),
        (f"large init explodes (above +{VANISH:g}) for {_names(acts)}",
         lambda rs: every(by(rs, init="large"), lambda r: r.decades_init > VANISH)),
        (f"Xavier (tanh) and He (ReLU) stay within {VANISH:g} decades and reach {TRAINS_ACC:g} accuracy",
         lambda rs: all(within(r.decades_init) and trains(r)
                        for a, i in proper.items() for r in [one(rs, activation=a, init=i)])),
        (f"the mean-field prediction is within {THEORY_TOL:g} decades of every measurement at init",
         lambda rs: all(gap(r) <= THEORY_TOL for r in rs)),
    ]
    pts = points(runs)
    worst = max(pts, key=lambda p: np.nanmax(p.get(gap)))
    says = [f"Largest gap between theory and measurement: {span(worst.get(gap), lambda v: f'{v:.2f}')} decades "
            f"({worst.label}); median gap {float(np.nanmedian([gap(r) for r in runs])):.2f}."]
    return conclude(runs, checks, says)  # render adds the theory column


def batchnorm(runs: list[RunSummary]) -> Conclusion:
    """`batchnorm`: BN turns the vanishing deep sigmoid net into one that trains."""
    checks = [
        (f"the plain sigmoid net's ratio at init is below -{VANISH:g} decades and it stays below "
         f"{TRAINS_ACC:g} accuracy", lambda rs: vanished(one(rs, net="sigmoid", bn="plain"))
         and not trains(one(rs, net="sigmoid", bn="plain"))),
        (f"with BatchNorm it stays within {VANISH:g} decades and reaches {TRAINS_ACC:g}",
         lambda rs: within(one(rs, net="sigmoid", bn="BN").decades_init) and trains(one(rs, net="sigmoid", bn="BN"))),
    ]
    pts = points(runs)
    plain, bn = one(pts, net="sigmoid", bn="plain"), one(pts, net="sigmoid", bn="BN")
    says = [f"Sigmoid without BN: {span(plain.get('decades_init'))} decades at init, accuracy "
            f"{span(plain.get('val_acc'), acc)}; with BN: {span(bn.get('decades_init'))}, accuracy "
            f"{span(bn.get('val_acc'), acc)}." if plain and bn else ""]
    relu_bn = one(pts, net="relu", bn="BN")
    if relu_bn is not None:
        says.append(_relu_bn(relu_bn))
    return conclude(runs, checks, says)


def _relu_bn(p: Point) -> str:
    """What BatchNorm does to a ReLU stack's error signal, against Yang et al.'s prediction."""
    layers = p.depth - 1
    predicted = layers * math.log10(YANG_RELU_BN)
    close = all(abs(r.decades_init - predicted) <= THEORY_TOL for r in p.runs)
    crossing = 1 + VANISH / math.log10(YANG_RELU_BN)
    text = (f"With BN the ReLU stack's error signal grows {span(p.get('per_layer_init'), _x)} per layer at init "
            f"({span(p.get('decades_init'))} decades over {p.depth} layers); Yang et al. (2019) predict "
            f"{YANG_RELU_BN:.2f}x ({dec(predicted)}): " + ("within" if close else "not within")
            + f" {THEORY_TOL:g} decades on every seed.")
    if all(r.decades_init > VANISH for r in p.runs):
        text += f" That is beyond the diagnosis's {VANISH:g} decades: exploding."
    elif all(0 < r.decades_init <= VANISH for r in p.runs) and close:
        text += (f" At this depth it stays within the diagnosis's {VANISH:g} decades; at that rate it would pass "
                 f"them at about {crossing:.0f} layers.")
    return text + f" After training: {span(p.get('decades_trained'))}."
