"""Pure: measured numbers -> each experiment's conclusion (text written from the numbers).

A Conclusion says whether the measurements support the claim; when they do not, its text
says so and which number disagrees. Nothing here trains or reads files.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import activations
from ..diagnose import thresholds as T
from .summary import RunSummary

# A run "trains" when it reaches this validation accuracy on digits (10 classes, chance 0.1;
# the healthy 20-layer nets here reach 0.93-0.97 in the quick budget).
TRAINS_ACC = 0.8
# ... and "fails" below this (the vanishing nets stay at 0.08-0.10).
FAILS_ACC = 0.3
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


def _by(runs: list[RunSummary], **coords: str) -> list[RunSummary]:
    return [r for r in runs if all(r.coords.get(k) == v for k, v in coords.items())]


def _one(runs: list[RunSummary], **coords: str) -> RunSummary | None:
    found = _by(runs, **coords)
    return found[0] if found else None


def _values(runs: list[RunSummary], axis: str) -> list[str]:
    return list(dict.fromkeys(r.coords[axis] for r in runs if axis in r.coords))


def _said(holds: bool, text: str) -> str:
    return ("**Supported.** " if holds else "**Not supported by these measurements.** ") + text


def _trains(r: RunSummary) -> bool:
    return r.val_acc >= TRAINS_ACC


def activations_(runs: list[RunSummary]) -> Conclusion:
    sat = [r for r in runs if activations.get(r.coords["net"]).saturating]
    rest = [r for r in runs if r not in sat]
    vanished = [r for r in sat if r.decades_init < -VANISH and not _trains(r)]
    kept = [r for r in rest if abs(r.decades_init) <= VANISH and _trains(r)]
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
    return Conclusion(holds, _said(holds, text))


def _slope(rs: list[RunSummary]) -> float:
    d = np.array([r.depth for r in rs], float)
    y = np.array([r.decades_init for r in rs], float)
    ok = np.isfinite(y)
    return float(np.polyfit(d[ok] - 1, y[ok], 1)[0]) if ok.sum() >= 2 else math.nan


def depth(runs: list[RunSummary]) -> Conclusion:
    parts, holds = [], True
    for net in _values(runs, "net"):
        rs = sorted(_by(runs, net=net), key=lambda r: r.depth)
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
    return Conclusion(holds, _said(holds, text))


def init(runs: list[RunSummary]) -> Conclusion:
    pred = [r.extra.get("predicted", math.nan) for r in runs]
    gap = [abs(r.decades_init - p) for r, p in zip(runs, pred) if math.isfinite(p) and math.isfinite(r.decades_init)]
    worst = max(gap, default=math.nan)
    bad_small = [r for r in _by(runs, init="small") if r.decades_init >= -VANISH]
    bad_large = [r for r in _by(runs, init="large") if r.decades_init <= VANISH]
    proper = [_one(runs, activation="tanh", init="xavier_normal"), _one(runs, activation="relu", init="he_normal")]
    bad_proper = [r for r in proper if r is not None and (abs(r.decades_init) > VANISH or not _trains(r))]
    holds = not bad_small and not bad_large and not bad_proper and worst <= THEORY_TOL
    rows = "; ".join(f"{r.label} {dec(r.decades_init)} (theory {dec(p)})" for r, p in zip(runs, pred))
    text = (f"Measured (theory) decades at init: {rows}. The theory is within {worst:.2f} decades of every "
            f"measurement (tolerance {THEORY_TOL:g}). "
            + ("Small init vanishes and large init explodes for both activations; " if not (bad_small or bad_large)
               else f"Against the claim: {', '.join(r.label for r in bad_small + bad_large)} stayed within {VANISH:g} decades. ")
            + ("Xavier (tanh) and He (ReLU) keep the signal within " f"{VANISH:g} decades and train." if not bad_proper
               else f"Against the claim: {', '.join(r.label for r in bad_proper)} did not keep the signal or did not train."))
    return Conclusion(holds, _said(holds, text),
                      {"theory (decades)": [dec(p) for p in pred]})


def batchnorm(runs: list[RunSummary]) -> Conclusion:
    plain, bn = _one(runs, net="sigmoid", bn="plain"), _one(runs, net="sigmoid", bn="BN")
    holds = bool(plain and bn and plain.decades_init < -VANISH and not _trains(plain)
                 and abs(bn.decades_init) <= VANISH and _trains(bn))
    text = (f"Sigmoid without BN: {dec(plain.decades_init)} decades at init, accuracy {acc(plain.val_acc)}; "
            f"with BN: {dec(bn.decades_init)} decades, accuracy {acc(bn.val_acc)}. " if plain and bn else "")
    relu_bn = _one(runs, net="relu", bn="BN")
    if relu_bn is not None:
        text += (f"BatchNorm is not neutral for ReLU: the plain BN-ReLU stack's error signal grows "
                 f"{relu_bn.per_layer_init:.2f}x per layer at init ({dec(relu_bn.decades_init)} decades over "
                 f"{relu_bn.depth} layers; Yang et al. 2019 predict 1.21x), a mild explosion that the "
                 f"diagnosis flags beyond {VANISH:g} decades; after training it is {dec(relu_bn.decades_trained)}.")
    return Conclusion(holds, _said(holds, text))


def residual(runs: list[RunSummary]) -> Conclusion:
    parts, degraded, kept = [], [], []
    for arch in _values(runs, "arch"):
        rs = sorted(_by(runs, arch=arch), key=lambda r: r.depth)
        (kept if "residual" in arch else degraded).append(rs[-1].val_acc >= rs[0].val_acc - DEGRADE)
        parts.append(f"{arch}: accuracy {', '.join(f'{acc(r.val_acc)} at {r.depth}' for r in rs)}; decades at init "
                     f"{', '.join(dec(r.decades_init) for r in rs)}, after training {', '.join(dec(r.decades_trained) for r in rs)}")
    holds = bool(degraded) and not any(degraded) and bool(kept) and all(kept)
    plain_bn = sorted(_by(runs, arch="plain+BN"), key=lambda r: r.depth)
    note = ""
    if plain_bn:
        deep = plain_bn[-1]
        what = "vanishing" if deep.decades_trained < -VANISH else "not vanishing"
        note = (f" With BatchNorm the deepest plain net's gradient at init is {dec(deep.decades_init)} decades "
                f"(it grows {deep.per_layer_init:.2f}x per layer) and after training {dec(deep.decades_trained)}: "
                f"{what}; its degradation is an optimisation problem, as He et al. (2016) argue.")
    text = ". ".join(parts) + "." + note
    return Conclusion(holds, _said(holds, text))


def outcome(r: RunSummary) -> str:
    """'explodes', 'vanishes', 'trains' or 'stalls', from the run's numbers (worst first)."""
    kinds = r.verdict_trained
    if r.diverged_at is not None or "non_finite" in kinds:
        return "explodes"
    if any(k in kinds for k in ("vanishing", "saturation", "dead_units")):
        return "vanishes"  # the gradient is gone: too small, or zero through saturated or dead units
    if "exploding" in kinds or r.final_loss > r.first_loss:
        return "explodes"
    return "trains" if _trains(r) else "stalls"


def optimizer(runs: list[RunSummary]) -> Conclusion:
    parts, holds = [], True
    for net in _values(runs, "net"):
        rs = _by(runs, net=net)
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
    return Conclusion(holds, _said(holds, text), {"outcome": [outcome(r) for r in runs]})


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
    x, h = _one(runs, init="xavier_normal"), _one(runs, init="he_normal")
    tx, th = (halving_step(x), halving_step(h)) if x and h else (None, None)
    holds = bool(x and h and th is not None and (tx is None or tx > 2 * th) and h.val_acc > x.val_acc + DEGRADE)
    when = lambda t, r: f"step {t}" if t is not None else f"not within {len(r.loss_curve)} steps"  # noqa: E731
    text = (f"Xavier: {dec(x.decades_init)} decades at init ({x.per_layer_init:.2f}x per layer), loss halved "
            f"{when(tx, x)}, final accuracy {acc(x.val_acc)}. He: {dec(h.decades_init)} decades, loss halved "
            f"{when(th, h)}, final accuracy {acc(h.val_acc)}." if x and h else "")
    return Conclusion(holds, _said(holds, text),
                      {"loss halved at": [str(halving_step(r)) if halving_step(r) is not None else "never" for r in runs]})


def _recovery(r: RunSummary) -> int | None:
    top = r.act_means[:, -1]
    lo = int(np.nanargmin(top))
    later = np.flatnonzero((top[lo:] > top[lo] + RECOVER) & (r.steps[lo:] > 0))
    t = halving_step(r)
    return int(r.steps[lo + later[0]]) if len(later) and t is not None and t > r.steps[lo] else None


def glorot2010(runs: list[RunSummary]) -> Conclusion:
    sig = _one(runs, net="sigmoid")
    tanh = [r for r in runs if r is not sig]
    top, below = sig.act_means[:, -1], sig.act_means[:, :-1]
    lo = int(np.nanargmin(top))
    low = bool(top[lo] < TOP_LOW and np.nanmin(below) > TOP_LOW)
    rec = _recovery(sig)
    tanh_ok = all(np.nanmax(np.abs(r.act_means[:, -1])) < TOP_LOW and _trains(r) for r in tanh)
    holds = low and tanh_ok
    text = (f"Sigmoid: the top hidden layer's mean output goes from {top[0]:.2f} to {top[lo]:.2f} at step "
            f"{int(sig.steps[lo])} while the layers below stay at {np.nanmin(below):.2f}-{np.nanmax(below):.2f}; "
            + (f"it recovers from step {rec} on, when the loss starts to fall (final accuracy {acc(sig.val_acc)}). "
               if rec is not None else f"no recovery within {len(sig.loss_curve)} steps (accuracy {acc(sig.val_acc)}). ")
            + "; ".join(f"{r.label}: top layer mean within ±{np.nanmax(np.abs(r.act_means[:, -1])):.2f} of 0, "
                        f"accuracy {acc(r.val_acc)}" for r in tanh) + ".")
    return Conclusion(holds, _said(holds, text))


CONCLUDERS: dict[str, Callable[[list[RunSummary]], Conclusion]] = {
    "activations": activations_, "depth": depth, "init": init, "batchnorm": batchnorm, "residual": residual,
    "optimizer": optimizer, "he2015": he2015, "glorot2010": glorot2010,
}
