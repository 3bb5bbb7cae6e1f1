"""Pure: a claim tested on every seed, and the thresholds the lab's conclusions use.

A claim is a list of Checks, each a sentence and a predicate over one seed's runs. The claim
is supported only when every check holds on every seed; the conclusion opens with that verdict
("Supported on 3/3 seeds") or with the checks that failed and on which seeds, followed by
sentences the experiment chose from its measured numbers.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..diagnose import thresholds as T
from .points import seeds_text

# A run "trains" when it reaches this validation accuracy on digits (10 classes, chance 0.1;
# the healthy 20-layer nets here reach 0.93-0.98 at either size).
TRAINS_ACC = 0.8
# Accuracy lost between the shallowest and the deepest net that counts as degradation.
DEGRADE = 0.1
# Per-layer decay (decades per layer, least squares over depths) that counts as exponential
# decay with depth: sigmoid+Xavier measures about -0.6, ReLU+He about 0.
SLOPE = 0.2
# Theory and measurement agree when within this many decades: benchmarks/theory.py measures at
# most 0.12 (27 configurations x 5 seeds, width 256); the lab's widths 64-128 add finite-width
# noise (the quick `init` grid's worst gap over seeds 0-2 is in tests/test_lab.py).
THEORY_TOL = 0.3
# glorot2010: the top hidden sigmoid layer "is driven towards zero" when its mean output falls
# below this (it starts at 0.5) while the layers below stay above it (Glorot & Bengio 2010, fig. 2).
TOP_LOW = 0.25
# ... and "recovers" when its mean rises by this much from its minimum while the loss halves.
RECOVER = 0.05
# he2015: steps to halve the training loss, smoothed over this many steps.
SMOOTH = 25
# An activation "works near its linear range" when the RMS of phi' over its units is at least
# this fraction of phi''s maximum (1 for tanh: the identity's derivative).
LINEAR = 0.5
# A measured per-layer factor "is accounted for" by a predicted one within this many decades per
# layer (2% of the factor; the sigmoid nets' factor and phi' RMS agree to 0.005 on seeds 0-2).
MATCH = 0.01
VANISH = T.VANISH_DECADES  # the diagnosis's threshold: more than 2 decades is vanishing/exploding
# Yang et al. (2019), "A Mean Field Theory of Batch Normalization": a BatchNorm-ReLU stack's
# error-signal norm grows sqrt(pi / (pi - 1)) per layer at init. (The theory module quotes
# per-run predictions in the `theory` column once it covers batch norm: issue 20.)
YANG_RELU_BN = math.sqrt(math.pi / (math.pi - 1))


@dataclass
class Conclusion:
    """Whether the numbers support the claim on every seed, a paragraph that says why, extra columns."""

    holds: bool
    text: str
    columns: dict[str, list[str]] = field(default_factory=dict)  # header -> one cell per grid point
    held_on: int = 0  # seeds on which every check held
    seeds: int = 0  # seeds measured


Check = tuple[str, Callable[[list], bool]]  # (what it asserts, predicate over one seed's runs)


def _by_seed(runs: Sequence) -> dict[int, list]:
    out: dict[int, list] = {}
    for r in runs:
        out.setdefault(r.seed, []).append(r)
    return dict(sorted(out.items()))


def _safe(check: Callable[[list], bool], runs: list) -> bool:
    """A check on one seed; a run it needs that is missing (None, no values) counts as failing."""
    try:
        return bool(check(runs))
    except (TypeError, AttributeError, IndexError, ValueError):
        return False


def conclude(runs: Sequence, checks: Sequence[Check], sentences: Sequence[str],
             columns: dict[str, list[str]] | None = None) -> Conclusion:
    """The verdict over every seed, then the experiment's sentences."""
    seeds = _by_seed(runs)
    failed = {what: [s for s, rs in seeds.items() if not _safe(f, rs)] for what, f in checks}
    good = [s for s in seeds if not any(s in bad for bad in failed.values())]
    n = len(seeds)
    holds = n > 0 and len(good) == n
    if holds:
        opening = f"**Supported on {n}/{n} seeds**: " + "; ".join(what for what, _ in checks) + "."
    else:
        opening = (f"**Not supported by these measurements** (every check held on {len(good)}/{n} seeds). "
                   "Against the claim: " + "; ".join(f"{what}: not on {seeds_text(bad)}"
                                                     for what, bad in failed.items() if bad) + ".")
    text = " ".join([opening, *(s for s in sentences if s)])
    return Conclusion(holds, text, dict(columns or {}), len(good), n)


def trains(r) -> bool:
    """The run reached TRAINS_ACC validation accuracy."""
    return r.val_acc >= TRAINS_ACC


def vanished(r) -> bool:
    """The first hidden layer's error signal is more than VANISH decades below the last one's at init."""
    return r.decades_init < -VANISH


def within(v: float, limit: float = VANISH) -> bool:
    """|v| <= limit (False for nan)."""
    return abs(v) <= limit


def thresholds() -> list[str]:
    """The thresholds the conclusions use, one line each, written from the constants above."""
    return [f"vanishing / exploding: more than {VANISH:g} decades between the first and the last hidden layer's "
            "error signal (the diagnosis's own threshold)",
            f"trains: validation accuracy of at least {TRAINS_ACC:g} (chance is 0.1)",
            f"degrades with depth: more than {DEGRADE:g} accuracy lost from the shallowest to the deepest net",
            f"decays exponentially with depth: a least-squares slope below -{SLOPE:g} decades per layer",
            f"theory agrees: within {THEORY_TOL:g} decades of the measurement",
            f"a measured per-layer factor is credited to a predicted one: within {MATCH:g} decades per layer",
            f"near-linear units: derivative RMS of at least {LINEAR:g} of the activation's maximum derivative",
            f"driven towards zero (glorot2010): top layer's mean output below {TOP_LOW:g}; recovers: up by "
            f"{RECOVER:g}; loss halved: running mean over {SMOOTH} steps"]
