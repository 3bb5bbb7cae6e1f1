"""Pure numpy: the numbers filed during recorded steps -> Trace rows, many steps at once.

Each recorded step leaves a `RawStep`: fetched values (float64, one host copy) and a table of
rows (slot, layer, numel, value index) saying what each value measures and for which layer.
Pooling is by sums: norms are squared and summed per (step, slot, layer), element counts are
summed alongside, and each metric is a ratio of two sums (see FORMULAS). This is what makes a
module called twice in one forward one layer: delta_rms = sqrt((|g1|^2 + |g2|^2) / (n1 + n2)).
It runs in batches (a few numpy calls for many steps), off the training loop's critical path.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .trace import LAYER_METRICS, STEP_METRICS

if TYPE_CHECKING:
    from torch import Tensor

# What a filed value measures. Norm slots are squared before pooling (sums of squares add).
# deriv_sq (a sum of phi'^2) and deriv (|phi'|, a norm) are two forms of one quantity, pooled together.
SLOTS = ("grad_w", "grad_b", "weight", "change", "before", "delta", "input_grad", "out",
         "out_nonfinite", "dead", "saturated", "deriv_sq", "grad_nonfinite", "deriv")
(GRAD_W, GRAD_B, WEIGHT, CHANGE, BEFORE, DELTA, INPUT_GRAD, OUT, OUT_NONFINITE, DEAD, SATURATED,
 DERIV_SQ, GRAD_NONFINITE, DERIV) = range(len(SLOTS))
ZERO = -1  # value index meaning "the number 0" (e.g. the saturated count of a ReLU input)
SQUARED = np.isin(np.arange(len(SLOTS)), [GRAD_W, GRAD_B, WEIGHT, CHANGE, BEFORE, DELTA, INPUT_GRAD, OUT, DERIV])
_S, _N, _ONE = 0, len(SLOTS), 2 * len(SLOTS)  # offsets into [sums; element counts; ones]
# metric -> (numerator: a sum, denominator, take the square root?, present where this slot was filed)
FORMULAS: dict[str, tuple[int, int, bool, int]] = {
    "grad_norm": (GRAD_W, _ONE, True, GRAD_W),
    "grad_rms": (GRAD_W, _N + GRAD_W, True, GRAD_W),
    "bias_grad_norm": (GRAD_B, _ONE, True, GRAD_B),
    "weight_rms": (WEIGHT, _N + WEIGHT, True, WEIGHT),
    "update_ratio": (CHANGE, _S + BEFORE, True, CHANGE),
    "delta_rms": (DELTA, _N + DELTA, True, DELTA),
    "input_grad_rms": (INPUT_GRAD, _N + INPUT_GRAD, True, INPUT_GRAD),
    "out_rms": (OUT, _N + OUT, True, OUT),
    "act_deriv_rms": (DERIV_SQ, _N + DERIV_SQ, True, DERIV_SQ),
    "saturated": (SATURATED, _N + SATURATED, False, SATURATED),
    "dead": (DEAD, _N + DEAD, False, DEAD),
    "nonfinite_grad": (GRAD_NONFINITE, _ONE, False, GRAD_W),  # present where any gradient was
    "nonfinite_act": (OUT_NONFINITE, _ONE, False, OUT_NONFINITE),
}
_M = [m for m in LAYER_METRICS if m in FORMULAS]
_COLS = [LAYER_METRICS.index(m) for m in _M]
_NUM, _DEN, _PRESENT = (np.array([FORMULAS[m][k] for m in _M]) for k in (0, 1, 3))
_SQRT = np.array([FORMULAS[m][2] for m in _M])[:, None]
_NONFINITE_GRAD = _M.index("nonfinite_grad")


class RawStep(NamedTuple):
    """One recorded step as filed: host values and what they mean."""

    values: np.ndarray  # float64, fetched in one copy
    rows: list[int]  # flat (slot, layer or -1, numel, value index or ZERO) quadruples
    chunks: list[np.ndarray]  # more rows, as (k, 4) int arrays (the parameter blocks)
    calls: list[int]  # flat (layer, numel, i_mean, i_centred): one per layer input seen
    loss: float | Tensor | None  # a 0-d tensor when added after the step (read when pooled)


def pool_steps(raws: list[RawStep], n_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """(layer values (steps, n_layers, n_metrics), step values (steps, n_step_metrics))."""
    n_steps, width = len(raws), n_layers + 1  # column n_layers: parameters no layer owns
    sizes = np.cumsum([0] + [len(r.values) for r in raws])
    values = np.concatenate([r.values for r in raws] + [np.zeros(1)])  # last: the ZERO entry
    tables, calls = [], []
    for k, r in enumerate(raws):
        t = np.concatenate([np.array(r.rows, dtype=np.int64).reshape(-1, 4)] + r.chunks)
        t[:, 3] = np.where(t[:, 3] == ZERO, len(values) - 1, t[:, 3] + sizes[k])
        tables.append(np.column_stack([np.full(len(t), k), t]))
        c = np.array(r.calls, dtype=np.int64).reshape(-1, 4)
        calls.append(np.column_stack([np.full(len(c), k), c[:, :2], c[:, 2:] + sizes[k]]))
    step, slot, layer, numel, index = np.concatenate(tables).T
    val = values[index]
    val = np.where(SQUARED[slot], val * val, val)
    flat = (step * len(SLOTS) + slot) * width + np.where(layer < 0, n_layers, layer)
    size = n_steps * len(SLOTS) * width
    s = np.bincount(flat, val, size).reshape(n_steps, len(SLOTS), width)
    n = np.bincount(flat, numel.astype(float), size).reshape(n_steps, len(SLOTS), width)
    seen = np.bincount(flat, None, size).reshape(n_steps, len(SLOTS), width) > 0
    for a in (s, n, seen):  # |phi'|^2 rows join the sum-of-phi'^2 rows
        a[:, DERIV_SQ] += a[:, DERIV]
    rows = _metrics(s[..., :n_layers], n[..., :n_layers], seen[..., :n_layers],
                    _moments(np.concatenate(calls), values, n_steps, n_layers))
    out = np.full((n_steps, len(STEP_METRICS)), np.nan)
    grads = s[:, GRAD_W].sum(-1) + s[:, GRAD_B].sum(-1)
    out[:, STEP_METRICS.index("global_grad_norm")] = np.where(
        seen[:, GRAD_W].any(-1) | seen[:, GRAD_B].any(-1), np.sqrt(grads), np.nan)
    loss = np.array([np.nan if r.loss is None else float(r.loss) for r in raws], dtype=float)
    out[:, STEP_METRICS.index("loss")] = loss
    known = np.array([r.loss is not None for r in raws])
    out[:, STEP_METRICS.index("nonfinite_loss")] = np.where(known, ~np.isfinite(loss), np.nan)
    return rows, out


def _moments(calls: np.ndarray, values: np.ndarray, n_steps: int, n_layers: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each layer's inputs over all its calls in a step: (steps, n_layers) each."""
    step, layer, cnt, i_mean, i_cen = calls.T
    key, cnt, mean_i, cen_i = step * n_layers + layer, cnt.astype(float), values[i_mean], values[i_cen]
    size = n_steps * n_layers
    with np.errstate(divide="ignore", invalid="ignore"):
        total = np.bincount(key, cnt, size)
        mean = np.bincount(key, mean_i * cnt, size) / total
        m2 = np.bincount(key, cen_i ** 2 + cnt * (mean_i - mean[key]) ** 2, size)  # Chan et al.
        return mean.reshape(n_steps, n_layers), np.sqrt(m2 / total).reshape(n_steps, n_layers)


def _metrics(s: np.ndarray, n: np.ndarray, seen: np.ndarray,
             moments: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Per-layer metrics from per-(step, slot, layer) sums, element counts and presence."""
    rows = np.full((s.shape[0], s.shape[2], len(LAYER_METRICS)), np.nan)
    ext = np.concatenate([s, n, np.ones_like(s[:, :1])], axis=1)  # (steps, 2 slots + 1, layers)
    present = seen[:, _PRESENT]
    present[:, _NONFINITE_GRAD] |= seen[:, GRAD_B]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        v = ext[:, _NUM] / ext[:, _DEN]
        v = np.where(_SQRT, np.sqrt(v), v)
        rows[:, :, _COLS] = np.where(present, v, np.nan).transpose(0, 2, 1)
    for metric, m in (("act_mean", moments[0]), ("act_std", moments[1])):
        rows[:, :, LAYER_METRICS.index(metric)] = np.where(seen[:, DEAD], m, np.nan)
    return rows
