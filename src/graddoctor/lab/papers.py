"""Pure: the conclusions of the two paper reproductions, He et al. (2015) and Glorot & Bengio (2010).

Same contract as conclude.py: every seed's numbers in; the claim's checks seed by seed, then
sentences chosen by conditions on the numbers, each number as its range over the seeds.
"""
from __future__ import annotations

import math

import numpy as np

from .claims import DEGRADE, RECOVER, SMOOTH, TOP_LOW, TRAINS_ACC, Conclusion, conclude, trains
from .points import Point, acc, one, points, span
from .summary import RunSummary


def _int(v: float) -> str:
    return f"{v:.0f}"


def halving_step(r: RunSummary) -> int | None:
    """First step at which the smoothed training loss is below half the first loss (None: never)."""
    y = r.loss_curve
    if not len(y) or not math.isfinite(r.first_loss):
        return None
    k = min(SMOOTH, len(y))
    smooth = np.convolve(np.where(np.isfinite(y), y, np.inf), np.ones(k) / k, mode="valid")
    hit = np.flatnonzero(smooth < r.first_loss / 2)
    return int(hit[0] + k - 1) if len(hit) else None


def _faster(x: RunSummary, h: RunSummary) -> bool:
    tx, th = halving_step(x), halving_step(h)
    return th is not None and (tx is None or tx > 2 * th)


def _halved(p: Point) -> str:
    """'loss halved at step 117…137', '... (not on 1/3 seeds)', or 'loss never halved within 800 steps'."""
    steps = [halving_step(r) for r in p.runs]
    hit = [t for t in steps if t is not None]
    if not hit:
        return f"loss never halved within {len(p.runs[0].loss_curve)} steps"
    return f"loss halved at step {span(hit, _int)}" + (
        f" (not on {len(steps) - len(hit)}/{len(steps)} seeds)" if len(hit) < len(steps) else "")


def he2015(runs: list[RunSummary]) -> Conclusion:
    """`he2015`: He halves the loss at least twice as fast as Xavier and ends more accurate."""
    checks = [
        ("He init halves the training loss in under half Xavier's steps (or Xavier never does)",
         lambda rs: _faster(one(rs, init="xavier_normal"), one(rs, init="he_normal"))),
        (f"He ends more than {DEGRADE:g} more accurate",
         lambda rs: one(rs, init="he_normal").val_acc > one(rs, init="xavier_normal").val_acc + DEGRADE),
    ]
    pts = points(runs)
    x, h = one(pts, init="xavier_normal"), one(pts, init="he_normal")
    says = [f"Xavier: {span(x.get('decades_init'))} decades at init ({span(x.get('per_layer_init'), _x)} per layer), "
            f"{_halved(x)}, accuracy {span(x.get('val_acc'), acc)}. "
            f"He: {span(h.get('decades_init'))} decades, {_halved(h)}, accuracy "
            f"{span(h.get('val_acc'), acc)}." if x and h else ""]
    cells = [", ".join(str(t) if t is not None else "never" for t in map(halving_step, p.runs)) for p in pts]
    return conclude(runs, checks, says, {"loss halved at (per seed)": cells})


def _x(v: float) -> str:
    return f"{v:.2f}x" if math.isfinite(v) else "n/a"


def recovery(r: RunSummary) -> int | None:
    """Step from which the top layer's mean rises RECOVER above its minimum, if the loss halves after it."""
    top = r.act_means[:, -1]
    lo = int(np.nanargmin(top))
    later = np.flatnonzero((top[lo:] > top[lo] + RECOVER) & (r.steps[lo:] > 0))
    t = halving_step(r)
    return int(r.steps[lo + later[0]]) if len(later) and t is not None and t > r.steps[lo] else None


def _driven_down(r: RunSummary) -> bool:
    top, below = r.act_means[:, -1], r.act_means[:, :-1]
    return bool(np.nanmin(top) < TOP_LOW and np.nanmin(below) > TOP_LOW)


def _centred(r: RunSummary) -> bool:
    return bool(np.nanmax(np.abs(r.act_means[:, -1])) < TOP_LOW)


def glorot2010(runs: list[RunSummary]) -> Conclusion:
    """`glorot2010`: the top sigmoid layer is pushed towards 0 and the tanh nets' is not."""
    checks = [
        (f"the sigmoid net's top hidden layer's mean output falls below {TOP_LOW:g} while the layers below stay "
         "above it", lambda rs: _driven_down(one(rs, net="sigmoid"))),
        (f"every tanh net's top layer mean stays within ±{TOP_LOW:g} of 0 and it reaches {TRAINS_ACC:g} accuracy",
         lambda rs: all(_centred(r) and trains(r) for r in rs if r.coords["net"] != "sigmoid")),
    ]
    pts = points(runs)
    sig = one(pts, net="sigmoid")
    says = []
    if sig is not None:
        lows = [int(np.nanargmin(r.act_means[:, -1])) for r in sig.runs]
        rec = [recovery(r) for r in sig.runs]
        back = [t for t in rec if t is not None]
        start = span(sig.get(lambda r: r.act_means[0, -1]), _f)
        low = span([r.act_means[i, -1] for r, i in zip(sig.runs, lows)], _f)
        below = (min(np.nanmin(r.act_means[:, :-1]) for r in sig.runs),
                 max(np.nanmax(r.act_means[:, :-1]) for r in sig.runs))
        says.append(f"Sigmoid: the top hidden layer's mean output goes from {start} to {low} at step "
                    f"{span([r.steps[i] for r, i in zip(sig.runs, lows)], _int)} while the layers below stay at "
                    f"{_f(below[0])}-{_f(below[1])}; "
                    + (f"it recovers on {len(back)}/{len(rec)} seeds (from step {span(back, _int)}; {_halved(sig)})"
                       if back else f"no recovery within {len(sig.runs[0].loss_curve)} steps")
                    + f"; accuracy {span(sig.get('val_acc'), acc)}.")
    for p in pts:
        if p is not sig:
            top = max(np.nanmax(np.abs(r.act_means[:, -1])) for r in p.runs)
            says.append(f"{p.label}: top layer mean within ±{_f(top)} of 0, accuracy {span(p.get('val_acc'), acc)}.")
    return conclude(runs, checks, says)


def _f(v: float) -> str:
    return f"{v:.2f}"
