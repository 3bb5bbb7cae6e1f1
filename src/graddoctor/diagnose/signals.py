"""Pure numpy: turn a Trace into the quantities the rules judge (log10, relative, per layer).

Error signals are compared as per-sample norms ||dL/d(output)|| / sqrt(batch) = RMS x
sqrt(elements per sample): the quantity the chain rule multiplies layer by layer (a
He-initialised ReLU layer keeps it, whatever the widths), so a 10-unit head and a 256-unit
hidden layer are compared fairly. Everything is relative to the reference layer (the last
layer before the output layer), so multiplying the loss by a constant or changing the batch
size changes nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..probe.trace import LAYER_METRICS, STEP_METRICS, Trace
from . import thresholds as T
from .structure import Structure, analyse

_TINY = 1e-300  # keeps log10 finite for exact zeros (an underflowed signal is "very small")


def _log10(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(np.where(np.isfinite(x), np.maximum(np.abs(x), _TINY), np.nan))


def window(n_steps: int) -> slice:
    """The recorded steps a verdict is judged on: the last half (at least MIN_STEPS)."""
    if n_steps <= T.MIN_STEPS:
        return slice(0, n_steps)
    return slice(n_steps - max(T.MIN_STEPS, math.ceil(n_steps / 2)), n_steps)


def persistent(mask: np.ndarray) -> bool:
    """True when a per-step symptom holds often enough (always, for a single step)."""
    mask = np.asarray(mask, bool)
    if len(mask) == 0:
        return False
    if len(mask) == 1:
        return bool(mask[0])
    need = max(min(T.MIN_STEPS, len(mask)), math.ceil(T.PERSIST_FRACTION * len(mask)))
    return int(mask.sum()) >= need


@dataclass
class Signals:
    """Per-step, per-layer quantities in log10 (shape (steps, layers) unless noted)."""

    names: list[str]
    types: list[str]
    activations: list[str | None]
    steps: np.ndarray  # (S,)
    log_signal: np.ndarray  # log10 per-sample error-signal norm
    log_rms: np.ndarray  # log10 per-element RMS of the error signal (like with like across widths)
    rel: np.ndarray  # log_signal minus the reference layer's, decades
    log_gain: np.ndarray  # log10 ||delta_l|| / ||delta_{l+1}|| (nan for the last layer)
    log_act: np.ndarray  # activation-derivative part of gain l (nan if not measured)
    log_weight: np.ndarray  # weight part of gain l: layer l+1's backward through its weights
    body: np.ndarray  # indices of the layers judged (all but the output layer), forward order
    ref: int  # index of the reference layer
    layer: dict  # other layer metrics by name, (S, L)
    step: dict  # step metrics by name, (S,)
    time: dict = field(default_factory=dict)  # recurrent layer -> (steps, ||dL/dx_t|| (k, T), type): through_time.py
    structure: Structure | None = None  # blocks, branches, attention scores (diagnose/structure.py)
    block_log: np.ndarray | None = None  # (S, blocks) log10 RMS of dL/d(block output), aligned with steps
    meta: dict = field(default_factory=dict)  # the Trace's metadata (optimizer, dtypes, non-finite record)

    @property
    def n_steps(self) -> int:
        """Recorded steps."""
        return len(self.steps)


def per_sample_norm(trace: Trace, metric: str = "delta_rms", size: str = "out_size") -> np.ndarray:
    """RMS x sqrt(elements per sample) = per-sample norm, (steps, layers); plain RMS where the size is unknown."""
    scale = np.sqrt(np.array([max(int(getattr(x, size) or 0), 1) for x in trace.layers], float))
    return trace[metric] * scale[None, :]


def signals(trace: Trace) -> Signals:
    """Compute the Signals of a trace (needs delta_rms, i.e. a stats='full' probe)."""
    layers = trace.layers
    delta = per_sample_norm(trace)
    gin = per_sample_norm(trace, "input_grad_rms", "in_size")
    log_signal = _log10(delta)
    n = len(layers)
    log_gain = np.full_like(log_signal, np.nan)
    log_act = np.full_like(log_signal, np.nan)
    log_weight = np.full_like(log_signal, np.nan)
    if n > 1:
        log_gain[:, :-1] = log_signal[:, :-1] - log_signal[:, 1:]
        lg_in = _log10(gin)
        log_act[:, :-1] = log_signal[:, :-1] - lg_in[:, 1:]
        log_weight[:, :-1] = lg_in[:, 1:] - log_signal[:, 1:]
    body = np.arange(max(n - 1, 1))
    ref = int(body[-1])
    rel = log_signal - log_signal[:, ref: ref + 1]
    layer = {m: trace[m] for m in ("saturated", "dead", "act_mean", "act_std", "act_deriv_rms",
                                   "update_ratio", "weight_rms", "grad_rms", "nonfinite_grad",
                                   "nonfinite_act", "out_rms", "grad_zero_frac") if m in LAYER_METRICS}
    step = {m: trace[m] for m in STEP_NAMES if m in STEP_METRICS}
    structure = analyse(trace)
    return Signals([x.name for x in layers], [x.type for x in layers], activations(trace),
                   trace.steps, log_signal, _log10(trace["delta_rms"]), rel, log_gain, log_act, log_weight, body,
                   ref, layer, step, time_profiles(trace), structure, block_log(trace, structure), dict(trace.meta))


def activations(trace: Trace) -> list[str | None]:
    """Each layer's input activation: the probe's, else a sigmoid/tanh the structure walk met on
    every path from the layer's producers (e.g. behind a padding the probe does not look through)."""
    out = [x.activation for x in trace.layers]
    info = (trace.meta.get("structure") or {}).get("layers", {})
    for i, x in enumerate(trace.layers):
        flags = [set(f) for f in info.get(x.name, {}).get("inputs", {}).values()]
        if out[i] is None and flags:
            common = set.intersection(*flags) & {"sigmoid", "tanh"}
            out[i] = sorted(common)[0] if common else None
    return out


STEP_NAMES = ("loss", "global_grad_norm", "nonfinite_loss", "lr")
BLOCK_SERIES = "block_delta_rms"  # per-element RMS of dL/d(block output), one per block (probe/blocks.py)


def block_log(trace: Trace, structure: Structure) -> np.ndarray | None:
    """(steps, blocks) log10 of the error signal along the depth axis, blocks in structure order.

    From the probe's block series when recorded; else (older traces, blocks=None) from the
    layers that read each block's input directly: their input gradient is the stream's there.
    """
    if not structure.blocks:
        return None
    steps = trace.steps
    out = np.full((len(steps), len(structure.blocks)), np.nan)
    s_steps, values = trace.series.get(BLOCK_SERIES, "")
    if len(s_steps) and values.size:
        row = {int(st): i for i, st in enumerate(s_steps)}
        for j, b in enumerate(structure.blocks):
            if 0 <= b.position < values.shape[1]:
                for k, st in enumerate(steps):
                    if int(st) in row:
                        out[k, j] = values[row[int(st)], b.position]
        return _log10(out)
    gin = trace["input_grad_rms"]
    info = (trace.meta.get("structure") or {}).get("layers", {})
    index = {n: i for i, n in enumerate(trace.layer_names)}
    for j, b in enumerate(structure.blocks):
        readers = [index[n] for n, x in info.items() if n in index and b.name in x.get("reads_block_input", [])]
        if readers:
            with np.errstate(all="ignore"):
                out[:, j] = np.nanmedian(gin[:, readers], axis=1) if len(readers) > 1 else gin[:, readers[0]]
    return _log10(out)


TIME_SERIES = "time_input_grad"  # ||dL/dx_t|| per time step of recurrent layers (probe/recurrent.py)


def time_profiles(trace) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """Layer -> (steps, ||dL/dx_t|| (steps, T), 'RNN'|'LSTM'|'GRU') of a Trace's unidirectional recurrent layers."""
    info = trace.meta.get("recurrent", {})
    return {layer: (*trace.series.get(TIME_SERIES, layer), info.get(layer, {}).get("type", "RNN"))
            for layer in trace.series.layers(TIME_SERIES) if not info.get(layer, {}).get("bidirectional", False)}


def median(a: np.ndarray, steps: slice) -> np.ndarray:
    """Per-layer median over a window of steps, ignoring nan."""
    part = a[steps]
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(part, axis=0) if len(part) else np.full(a.shape[1:], np.nan)
