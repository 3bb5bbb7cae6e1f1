"""Pure numpy: recorded steps (RawSteps) -> Trace rows and series, many steps at once.

Pooling is by sums, as each slot's form says (slots.py): norms are squared and summed per
(step, slot, key), counts are summed alongside, and each metric is a ratio of two sums. This
is what makes a module called twice in one forward one layer: delta_rms = sqrt((|g1|^2 +
|g2|^2) / (n1 + n2)); DDP ranks are more calls of the same kind. It runs in batches (a few
numpy calls for many steps), off the training loop's critical path.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .record import COUNT, INDEX, KEY, SLOT, RawStep
from .slots import ACT_CENTRED, ACT_MEAN, GLOBAL_GRAD, N_SLOTS, SLOTS, ZERO
from .slots import INDEX as SLOT_INDEX
from .trace import LAYER_METRICS, STEP_METRICS

_SQUARE = np.array([s.form == "norm" for s in SLOTS])
_INTO = np.array([SLOT_INDEX[s.into] if s.into else i for i, s in enumerate(SLOTS)])
_AXIS = np.array([s.axis for s in SLOTS])
_MOMENTS = {"mean", "centred"}


class Pooled(NamedTuple):
    """What a batch of steps adds to the Trace."""

    layer: np.ndarray  # (steps, n_layers, len(LAYER_METRICS))
    step: np.ndarray  # (steps, len(STEP_METRICS))
    series: list[dict[tuple[str, int], np.ndarray]]  # per step: (series name, layer or -1: model) -> values


def _stack(raws: list[RawStep]) -> tuple[np.ndarray, np.ndarray]:
    """(one table (n, 1 + WIDTH) with the step position first and indices into `values`, values + [0])."""
    sizes = np.cumsum([0] + [len(r.values) for r in raws])
    values = np.concatenate([r.values for r in raws] + [np.zeros(1)])  # last: the ZERO entry
    tables = []
    for k, r in enumerate(raws):
        t = r.table()
        t = np.column_stack([np.full(len(t), k), t])
        t[:, 1 + INDEX] = np.where(t[:, 1 + INDEX] == ZERO, len(values) - 1, t[:, 1 + INDEX] + sizes[k])
        tables.append(t)
    return np.concatenate(tables) if tables else np.zeros((0, 6), np.int64), values


def pool_steps(raws: list[RawStep], n_layers: int, n_blocks: int = 0) -> Pooled:
    """Turn recorded steps into Trace rows (layer and step metrics) and per-step series."""
    n_steps = len(raws)
    table, values = _stack(raws)
    axis = _AXIS[table[:, 1 + SLOT]]
    flat_rows = (axis == "layer") | (axis == "block")
    width = max(n_layers, n_blocks) + 1  # the last column: parameters no layer owns (key -1)
    t = table[flat_rows]
    s_step, s_slot, key, count, index = t[:, 0], _INTO[t[:, 1 + SLOT]], t[:, 1 + KEY], t[:, 1 + COUNT], t[:, 1 + INDEX]
    val = values[index]
    val = np.where(_SQUARE[t[:, 1 + SLOT]], val * val, val)
    flat = (s_step * N_SLOTS + s_slot) * width + np.where(key < 0, width - 1, key)
    size = n_steps * N_SLOTS * width
    s = np.bincount(flat, val, size).reshape(n_steps, N_SLOTS, width)
    n = np.bincount(flat, count.astype(float), size).reshape(n_steps, N_SLOTS, width)
    seen = np.bincount(flat, None, size).reshape(n_steps, N_SLOTS, width) > 0
    moments = _moments(t[s_slot == ACT_MEAN], t[s_slot == ACT_CENTRED], values, n_steps, width)

    layer = np.full((n_steps, n_layers, len(LAYER_METRICS)), np.nan)
    series: list[dict[tuple[str, int], np.ndarray]] = [{} for _ in range(n_steps)]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for i, sl in enumerate(SLOTS):
            if sl.axis not in ("layer", "block"):
                continue
            present = seen[:, i].copy()
            for p in sl.present:
                present |= seen[:, SLOT_INDEX[p]]
            for metric, den in sl.metrics:
                if sl.form in _MOMENTS:
                    v = moments[0] if sl.form == "mean" else moments[1]
                else:
                    v = s[:, i] / _denominator(den, i, s, n)
                    v = np.sqrt(v) if sl.root else v
                v = np.where(present, v, np.nan)
                if sl.axis == "layer":
                    layer[:, :, LAYER_METRICS.index(metric)] = v[:, :n_layers]
                else:
                    for k in np.flatnonzero(present[:, :n_blocks].any(1)):
                        series[k][(metric, -1)] = v[k, :n_blocks]
        _time_series(table[axis == "time"], values, series)

    out = np.full((n_steps, len(STEP_METRICS)), np.nan)
    name, grad_slots = GLOBAL_GRAD
    grads = sum(s[:, g].sum(-1) for g in grad_slots)
    any_grad = np.any([seen[:, g].any(-1) for g in grad_slots], axis=0)
    out[:, STEP_METRICS.index(name)] = np.where(any_grad, np.sqrt(grads), np.nan)
    loss = np.array([np.nan if r.loss is None else float(r.loss) for r in raws], dtype=float)
    out[:, STEP_METRICS.index("loss")] = loss
    known = np.array([r.loss is not None for r in raws])
    out[:, STEP_METRICS.index("nonfinite_loss")] = np.where(known, ~np.isfinite(loss), np.nan)
    out[:, STEP_METRICS.index("lr")] = [r.host.get("lr", np.nan) for r in raws]
    return Pooled(layer, out, series)


def _denominator(den: str, i: int, s: np.ndarray, n: np.ndarray) -> np.ndarray | float:
    if den == "1":
        return 1.0
    if den == "n":
        return n[:, i]
    if den.startswith("n:"):
        return n[:, SLOT_INDEX[den[2:]]]
    return s[:, SLOT_INDEX[den]]


def _moments(mean_rows: np.ndarray, centred_rows: np.ndarray, values: np.ndarray, n_steps: int,
             width: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each layer's inputs over all its calls in a step: (steps, width) each.

    The rows come in pairs (one call: its mean, then its |x - mean|), pooled with Chan et al.'s
    formula: M2 = sum_i (c_i^2 + n_i (mean_i - mean)^2).
    """
    step, key, cnt = mean_rows[:, 0], mean_rows[:, 1 + KEY], mean_rows[:, 1 + COUNT].astype(float)
    k = step * width + np.where(key < 0, width - 1, key)
    mean_i, cen_i = values[mean_rows[:, 1 + INDEX]], values[centred_rows[:, 1 + INDEX]]
    size = n_steps * width
    with np.errstate(divide="ignore", invalid="ignore"):
        total = np.bincount(k, cnt, size)
        mean = np.bincount(k, mean_i * cnt, size) / total
        m2 = np.bincount(k, cen_i ** 2 + cnt * (mean_i - mean[k]) ** 2, size)
        return mean.reshape(n_steps, width), np.sqrt(m2 / total).reshape(n_steps, width)


def _time_series(rows: np.ndarray, values: np.ndarray, series: list[dict]) -> None:
    """Per-time-step rows (a vector of sums of squares each) -> per-sample norms at each t, per layer.

    Calls of one layer in one step add position by position (sequences of different lengths
    add where both have a step t), as every other slot pools.
    """
    sums: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
    for k, slot, key, count, index, length in rows.tolist():
        s, n = sums.get((k, slot, key), (np.zeros(0), np.zeros(0)))
        w = max(len(s), length)
        s, n = np.pad(s, (0, w - len(s))), np.pad(n, (0, w - len(n)))
        s[:length] += values[index:index + length]
        n[:length] += count
        sums[(k, slot, key)] = (s, n)
    for (k, slot, key), (s, n) in sums.items():
        for metric, den in SLOTS[slot].metrics:
            series[k][(metric, key)] = np.sqrt(s / (n if den == "n" else 1.0))
