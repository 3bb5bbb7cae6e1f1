"""What the probe does beyond its core, for real training set-ups: one object the Probe calls.

- torch.compile: no module hook at all on a compiled model (stats="norms" only; wrappers.py).
- DistributedDataParallel: each recorded step is combined across ranks with one collective
  (distributed.py; the wrapped module is what is watched, wrappers.py).
- Mixed precision: error signals are divided by the GradScaler's loss scale, and steps the
  scaler skipped are left out (amp.py).
- Recurrent layers: the error signal per time step, into Trace.series (recurrent.py).

Their per-step numbers ride in the step's one host copy: `file` appends them to the
StepRecord before it is fetched, `finish` takes them out of the fetched values.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
from torch import Tensor

from . import recurrent
from .amp import LossScale, unscale
from .distributed import Reducer, world_of
from .pooling import INPUT_GRAD, RawStep
from .wrappers import NO_FORWARD


class Token(NamedTuple):
    """Where this step's extra numbers sit in the fetched values, and what they are."""

    amp: int  # offset of [scale at forward, scale now] (-1: no scaler)
    time: list[tuple[str, str, int, int]]  # (kind, layer, batch, length) per recurrent call
    time_at: int
    units: list[tuple[int, int]]  # (layer, units) per call, for the DDP dead masks
    units_at: int
    optimizer_skipped: bool
    substituted: frozenset[int]  # layers whose raw input recurrent.py made require a gradient
    start: int
    stop: int  # the extra numbers fill values[start:stop]


def _without_input_grad(raw: RawStep, layers: frozenset[int]) -> RawStep:
    """The step without the input_grad rows of `layers` (their input needed no gradient by itself)."""
    table = np.concatenate([np.array(raw.rows, dtype=np.int64).reshape(-1, 4)] + list(raw.chunks))
    drop = (table[:, 0] == INPUT_GRAD) & np.isin(table[:, 1], list(layers))
    return raw._replace(rows=[], chunks=[table[~drop]])


def _cut(raw: RawStep, start: int, stop: int) -> RawStep:
    """The step without values[start:stop] (numbers no row refers to), indices after it shifted."""
    if stop <= start:
        return raw
    table = np.concatenate([np.array(raw.rows, dtype=np.int64).reshape(-1, 4)] + list(raw.chunks))
    calls = np.array(raw.calls, dtype=np.int64).reshape(-1, 4)
    table[:, 3] = np.where(table[:, 3] >= stop, table[:, 3] - (stop - start), table[:, 3])
    calls[:, 2:] = np.where(calls[:, 2:] >= stop, calls[:, 2:] - (stop - start), calls[:, 2:])
    return RawStep(np.concatenate([raw.values[:start], raw.values[stop:]]), [], [table], calls.reshape(-1), raw.loss)


def _file(rec, tensors: list[Tensor]) -> int:
    """Append 1-D tensors to the StepRecord's values (fetched with the step); returns their offset."""
    start = rec.size
    for t in tensors:
        rec.values.append(t.reshape(-1))
        rec.size += t.numel()
    return start


class Extras:
    """Loss-scale correction, cross-rank reduction and per-time-step series for one Probe."""

    def __init__(self, layout, trace, stats: str, scaler: object | None = None,
                 group: object | None = None, compiled: bool = False) -> None:
        self.trace, self.stats, self.compiled = trace, stats, compiled
        self.amp = LossScale(scaler) if scaler is not None else None
        self.dist = Reducer(group) if group is not None and world_of(group)[0] > 1 else None
        mods = [m for m in layout.candidates() if recurrent.is_recurrent(m)]
        self.time = recurrent.TimeRecorder(layout.names, mods) if mods and stats == "full" else None
        self._layout = layout
        self._held: tuple | None = None  # DDP: (step, raw, units, fired, series) waiting for its loss
        self._forwards = 0
        self._checked = False
        if self.time is not None:
            trace.meta["recurrent"] = {layout.names[m]: {"type": type(m).__name__, "bidirectional": m.bidirectional,
                                                         "batch_first": m.batch_first} for m in mods}
        if self.amp is not None:
            trace.meta["amp_skipped_steps"] = []
        if self.dist is not None:
            trace.meta["world_size"] = self.dist.world

    @property
    def module_hooks(self) -> bool:
        """False for compiled models: no module hook may touch their graph."""
        return not self.compiled

    # -- called by the Probe ----------------------------------------------------------------
    def sync(self, recording_full: bool) -> None:
        """A new step begins: drop leftovers; recurrent hooks only on recorded full steps."""
        self._forwards = 0
        for part in (self.time, self.dist):
            if part is not None:
                part.reset()
        if self.time is not None:
            self.time.attach() if recording_full else self.time.detach()

    def forward(self, layer: int, x: Tensor | None) -> None:
        """One recorded forward call of a watched layer."""
        self._forwards += 1
        if self.amp is not None:
            self.amp.forward()
        if self.dist is not None:
            self.dist.forward(layer, x)

    def file(self, rec, optimizer_skipped: bool) -> Token | None:
        """Put this step's extra numbers into the record's host copy (call before rec.finish())."""
        if not self._checked and self.stats == "full" and self.module_hooks:
            self._checked = True
            if self._forwards == 0 and any(p.grad is not None for p in self._layout.params):
                warnings.warn(NO_FORWARD, stacklevel=4)
        if self.amp is None and self.time is None and self.dist is None:
            return None  # nothing beyond the core: the common case costs nothing more
        start = rec.size
        amp = _file(rec, self.amp.take()) if self.amp is not None else -1
        calls, vecs = self.time.take() if self.time is not None else ([], [])
        time_at = _file(rec, vecs)
        units, masks = self.dist.take() if self.dist is not None else ([], [])
        subst = frozenset(self._layout.index[m] for m in self.time.substituted
                          if m in self._layout.index) if self.time is not None else frozenset()
        units_at = _file(rec, masks)
        return Token(amp, calls, time_at, units, units_at, optimizer_skipped, subst, start, rec.size)

    def finish(self, step: int, raw: RawStep, token: Token | None) -> list[tuple[int, RawStep]]:
        """The fetched step -> the (step, RawStep) pairs to pool now (none while it waits or if skipped)."""
        if token is None:
            return [(step, raw)]
        v = raw.values
        raw = _cut(raw, token.start, token.stop)  # the extras, read from v below, leave the step
        if token.substituted:
            raw = _without_input_grad(raw, token.substituted)
        lengths = [c[3] for c in token.time]
        cut = token.time_at + np.cumsum([0] + lengths)
        series = recurrent.pool_calls([(k, name, b, v[cut[i]: cut[i + 1]]) for i, (k, name, b, _)
                                       in enumerate(token.time)])
        if self.amp is not None:
            at_forward, now = float(v[token.amp]), float(v[token.amp + 1])
            loss_ok = raw.loss is None or np.isfinite(float(raw.loss))  # a NaN loss is no scale problem
            if loss_ok and LossScale.skipped(at_forward, now, token.optimizer_skipped):
                self.trace.meta["amp_skipped_steps"].append(int(step))
                return []
            raw = unscale(raw, at_forward)
            series = {k: (s / at_forward ** 2, n) for k, (s, n) in series.items()}
        if self.dist is not None:
            bits = sum(u for _, u in token.units)
            fired = v[token.units_at: token.units_at + bits]
            self._held = (step, raw, token.units, fired, series)
            return self.release(raw.loss) if raw.loss is not None else []
        return [self._store(step, raw, series)]

    def holding(self, step: int) -> bool:
        """DDP: is step `step` waiting for its loss (probe.step(loss) after the optimizer ended it)?"""
        return self._held is not None and self._held[0] == step

    def release(self, loss: Tensor | float | None = None) -> list[tuple[int, RawStep]]:
        """DDP: reduce the waiting step across ranks (with `loss`, if given): one collective."""
        if self._held is None:
            return []
        step, raw, units, fired, series = self._held
        self._held = None
        if loss is not None:
            raw = raw._replace(loss=float(loss.detach() if isinstance(loss, Tensor) else loss))
        raw, series = self.dist.reduce(raw, units, fired, series)
        return [self._store(step, raw, series)]

    def close(self, clean: bool = True) -> list[tuple[int, RawStep]]:
        """Remove hooks; reduce a waiting step unless the probe is closing on an exception."""
        if self.time is not None:
            self.time.closed = True
            self.time.detach()
        if not clean:
            self._held = None  # other ranks may not reach a collective now
        return self.release()

    def _store(self, step: int, raw: RawStep, series: dict) -> tuple[int, RawStep]:
        for (kind, layer), (sums, counts) in series.items():
            self.trace.series.add(recurrent.SERIES[kind], layer, step, recurrent.per_sample_norm(sums, counts))
        return step, raw
