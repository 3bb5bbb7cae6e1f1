"""Pure: evidence shared by the rules — which steps are judged, the learning-rate and input-scale causes."""
from __future__ import annotations

import numpy as np

from . import thresholds as T
from .findings import Cause, Finding
from .signals import Signals, median, window
from .table import remedies_for


def _finite_steps(s: Signals) -> np.ndarray:
    ok = np.isfinite(s.log_signal[:, s.body]).any(axis=1)
    loss = s.step["nonfinite_loss"]
    return np.where(ok & ~(np.nan_to_num(loss) > 0))[0]


def _judged(s: Signals) -> np.ndarray:
    """Positions of the steps a verdict is made on."""
    finite = _finite_steps(s)
    return finite[window(len(finite))]


def _q(s: Signals, i: int) -> str:
    """A layer name quoted for prose ('0', 'body.3.linear')."""
    return f"'{s.names[i]}'"


def _finding(kind: str, severity: str, idx, s: Signals, summary: str, evidence: dict,
             causes: list[Cause]) -> Finding:
    return Finding(kind, severity, tuple(s.names[i] for i in idx), summary, evidence,
                   tuple(causes), remedies_for(causes))


def input_scale_cause(s: Signals) -> Cause | None:
    """The first layer receives unnormalised float inputs (not token indices)."""
    if not s.n_steps or s.types[0] in ("Embedding", "EmbeddingBag"):
        return None
    every = slice(0, s.n_steps)
    std = float(median(s.layer["act_std"], every)[0])
    mean = float(np.abs(median(s.layer["act_mean"], every)[0]))
    if not np.isfinite(std) or std <= 0:
        return None
    off = max(abs(np.log10(std)), np.log10(max(mean, 1e-12) / std) if mean > T.INPUT_SCALE else 0.0)
    if off < np.log10(T.INPUT_SCALE):
        return None
    return Cause("input_scale", f"the inputs of {_q(s, 0)} have std {std:.3g} and mean {mean:.3g}; "
                 "standardised inputs have std 1, mean 0", {"input_std": std, "input_mean": mean},
                 1.0 + off)


def appeared_in_training(s: Signals, signed_at_first: np.ndarray, limit: float) -> bool:
    """Was the symptom absent at the first recorded step, so that it appeared while training?

    `signed_at_first`: the values the symptom is judged on at that step, signed so that the
    symptom is a value above `limit` (NaN: not there). False for a run of one recorded step.
    """
    at_first = np.nan_to_num(np.asarray(signed_at_first, dtype=float), nan=-np.inf)
    return s.n_steps > 1 and not (at_first > limit).any()


def _lr_cause(s: Signals, judged: np.ndarray, onset: bool = False) -> Cause | None:
    """Learning rate too high: the gradient or the weights grew while training, or the steps are huge.

    With `onset` (the symptom was absent at the first recorded step and appeared while
    training), training itself is the prime suspect and the cause ranks first.
    """
    gn = s.step["global_grad_norm"]
    finite = np.isfinite(gn) & (gn > 0)
    if finite.sum() < 2:
        return None
    growth = float(np.log10(gn[finite][-1]) - np.log10(gn[finite][0]))
    ur = s.layer["update_ratio"]
    ur = ur[np.isfinite(ur)]
    big = float(np.percentile(ur, 90)) if len(ur) else float("nan")
    w = s.layer["weight_rms"]
    rows = np.where(np.isfinite(w).any(axis=1))[0]
    w_growth = 0.0
    if len(rows) >= 2:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.log10(w[rows[-1]] / w[rows[0]])
        w_growth = float(np.median(r[np.isfinite(r)])) if np.isfinite(r).any() else 0.0
    if not (growth > T.GROWTH_DECADES or big > T.UPDATE_RATIO_HIGH or w_growth > T.WEIGHT_GROWTH_DECADES):
        return None
    when = "appeared during training; " if onset else ""
    return Cause("learning_rate_too_high",
                 f"{when}the gradient norm changed {10 ** growth:.3g}x and the weights {10 ** w_growth:.3g}x "
                 f"while training; 90th-percentile update/weight ratio {big:.2g} (healthy ~1e-3)",
                 {"growth_decades": growth, "weight_growth_decades": w_growth, "update_ratio_p90": big,
                  "onset": onset}, (T.ONSET_SCORE if onset else 2.0) + max(growth, 0))


