"""Pure: the conclusions about training dynamics (depth degradation, step size, the two papers).

Same contract as conclude.py: numbers in, a Conclusion whose text says whether they support
the claim and, when not, which number disagrees.
"""
from __future__ import annotations

import math

import numpy as np

from .conclude import DEGRADE, RECOVER, SMOOTH, TOP_LOW, VANISH, Conclusion, acc, by, dec, one, said, trains, values
from .summary import RunSummary


def residual(runs: list[RunSummary]) -> Conclusion:
    """`residual`: plain nets lose accuracy with depth, residual nets do not; what the gradient does."""
    parts, degraded, kept = [], [], []
    for arch in values(runs, "arch"):
        rs = sorted(by(runs, arch=arch), key=lambda r: r.depth)
        (kept if "residual" in arch else degraded).append(rs[-1].val_acc >= rs[0].val_acc - DEGRADE)
        parts.append(f"{arch}: accuracy {', '.join(f'{acc(r.val_acc)} at {r.depth}' for r in rs)}; decades at init "
                     f"{', '.join(dec(r.decades_init) for r in rs)}, after training {', '.join(dec(r.decades_trained) for r in rs)}")
    holds = bool(degraded) and not any(degraded) and bool(kept) and all(kept)
    plain_bn = sorted(by(runs, arch="plain+BN"), key=lambda r: r.depth)
    note = ""
    if plain_bn:
        deep = plain_bn[-1]
        what = "vanishing" if deep.decades_trained < -VANISH else "not vanishing"
        note = (f" With BatchNorm the deepest plain net's gradient at init is {dec(deep.decades_init)} decades "
                f"(it grows {deep.per_layer_init:.2f}x per layer) and after training {dec(deep.decades_trained)}: "
                f"{what}; its degradation is an optimisation problem, as He et al. (2016) argue.")
    text = ". ".join(parts) + "." + note
    return Conclusion(holds, said(holds, text))


def outcome(r: RunSummary) -> str:
    """'explodes', 'vanishes', 'trains' or 'stalls', from the run's numbers (worst first)."""
    kinds = r.verdict_trained
    if r.diverged_at is not None or "non_finite" in kinds:
        return "explodes"
    if any(k in kinds for k in ("vanishing", "saturation", "dead_units")):
        return "vanishes"  # the gradient is gone: too small, or zero through saturated or dead units
    if "exploding" in kinds or r.final_loss > r.first_loss:
        return "explodes"
    return "trains" if trains(r) else "stalls"


def optimizer(runs: list[RunSummary]) -> Conclusion:
    """`optimizer`: by effective step, each net stalls first, trains somewhere, and fails last."""
    parts, holds = [], True
    for net in values(runs, "net"):
        rs = by(runs, net=net)
        key = {id(r): r.extra["lr"] / (1 - r.extra["momentum"]) for r in rs}  # the effective step
        rs.sort(key=lambda r: key[id(r)])
        got = [outcome(r) for r in rs]
        ok = got[0] == "stalls" and "trains" in got and got[-1] in ("explodes", "vanishes")
        holds &= ok
        seen = {o: sorted({key[id(r)] for r, g in zip(rs, got) if g == o}) for o in dict.fromkeys(got)}
        parts.append(f"{net}: " + "; ".join(f"{o} at {', '.join(f'{v:g}' for v in steps)}" for o, steps in seen.items()))
    text = "By the effective step lr/(1-momentum): " + ". ".join(parts) + ". " + (
        "The same healthy net stalls, trains or fails as the step grows: the step size decides." if holds else
        "Against the claim: some net does not stall at the smallest step, never trains, or survives the largest.")
    return Conclusion(holds, said(holds, text), {"outcome": [outcome(r) for r in runs]})


def halving_step(r: RunSummary) -> int | None:
    """First step at which the smoothed training loss is below half the first loss (None: never)."""
    y = r.loss_curve
    if not len(y) or not math.isfinite(r.first_loss):
        return None
    k = min(SMOOTH, len(y))
    smooth = np.convolve(np.where(np.isfinite(y), y, np.inf), np.ones(k) / k, mode="valid")
    hit = np.flatnonzero(smooth < r.first_loss / 2)
    return int(hit[0] + k - 1) if len(hit) else None


def he2015(runs: list[RunSummary]) -> Conclusion:
    """`he2015`: He halves the loss at least twice as fast as Xavier and ends more accurate."""
    x, h = one(runs, init="xavier_normal"), one(runs, init="he_normal")
    tx, th = (halving_step(x), halving_step(h)) if x and h else (None, None)
    holds = bool(x and h and th is not None and (tx is None or tx > 2 * th) and h.val_acc > x.val_acc + DEGRADE)
    when = lambda t, r: f"step {t}" if t is not None else f"not within {len(r.loss_curve)} steps"
    text = (f"Xavier: {dec(x.decades_init)} decades at init ({x.per_layer_init:.2f}x per layer), loss halved "
            f"{when(tx, x)}, final accuracy {acc(x.val_acc)}. He: {dec(h.decades_init)} decades, loss halved "
            f"{when(th, h)}, final accuracy {acc(h.val_acc)}." if x and h else "")
    return Conclusion(holds, said(holds, text),
                      {"loss halved at": [str(halving_step(r)) if halving_step(r) is not None else "never" for r in runs]})


def _recovery(r: RunSummary) -> int | None:
    top = r.act_means[:, -1]
    lo = int(np.nanargmin(top))
    later = np.flatnonzero((top[lo:] > top[lo] + RECOVER) & (r.steps[lo:] > 0))
    t = halving_step(r)
    return int(r.steps[lo + later[0]]) if len(later) and t is not None and t > r.steps[lo] else None


def glorot2010(runs: list[RunSummary]) -> Conclusion:
    """`glorot2010`: the top sigmoid layer is pushed towards 0 and the tanh nets' is not."""
    sig = one(runs, net="sigmoid")
    tanh = [r for r in runs if r is not sig]
    top, below = sig.act_means[:, -1], sig.act_means[:, :-1]
    lo = int(np.nanargmin(top))
    low = bool(top[lo] < TOP_LOW and np.nanmin(below) > TOP_LOW)
    rec = _recovery(sig)
    tanh_ok = all(np.nanmax(np.abs(r.act_means[:, -1])) < TOP_LOW and trains(r) for r in tanh)
    holds = low and tanh_ok
    text = (f"Sigmoid: the top hidden layer's mean output goes from {top[0]:.2f} to {top[lo]:.2f} at step "
            f"{int(sig.steps[lo])} while the layers below stay at {np.nanmin(below):.2f}-{np.nanmax(below):.2f}; "
            + (f"it recovers from step {rec} on, when the loss starts to fall (final accuracy {acc(sig.val_acc)}). "
               if rec is not None else f"no recovery within {len(sig.loss_curve)} steps (accuracy {acc(sig.val_acc)}). ")
            + "; ".join(f"{r.label}: top layer mean within ±{np.nanmax(np.abs(r.act_means[:, -1])):.2f} of 0, "
                        f"accuracy {acc(r.val_acc)}" for r in tanh) + ".")
    return Conclusion(holds, said(holds, text))
