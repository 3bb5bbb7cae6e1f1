"""Recorded steps on their way into the Trace: the parts, the one host copy, pooling, the sinks.

The Probe decides when a step is recorded and fills its StepRecord through hooks; the
Pipeline takes the finished record: the every-step checks and each part put their device
values in (parts.py), one host copy, the parts take their own values back and transform the
step (unscale, reduce across ranks, drop input rows), and the step waits, fetched, until
pooling turns many steps into Trace rows at once and the sinks see them.
"""
from __future__ import annotations

import numpy as np
from torch import Tensor

from .checks import Checks
from .collect import StepRecord
from .layout import Layout
from .parts import Part
from .pooling import pool_steps
from .record import RawStep
from .series import MODEL
from .trace import Trace

POOL_EVERY = 64  # recorded steps buffered (~10 kB each) before they are pooled into the Trace


class Pipeline:
    """Fetched steps, waiting for pooling; the parts that transform them; the sinks that see them."""

    def __init__(self, trace: Trace, layout: Layout, parts: list[Part], checks: Checks, sinks: list) -> None:
        self.trace, self.layout, self.parts, self.checks, self.sinks = trace, layout, parts, checks, sinks
        self.meta = trace.meta
        self.pending: list[tuple[int, RawStep]] = []  # fetched, not yet pooled into the Trace
        self.closed = False

    def ship(self, rec: StepRecord, step: int) -> None:
        """A recorded step ends: the checks and parts add theirs, one host copy, the parts transform it."""
        self.checks.file(rec)
        spans = []
        for part in self.parts:
            start = rec.size
            spans.append((part, part.file(rec), start, rec.size))
        raw = rec.finish()  # the one host copy
        owns = [raw.values[a:b].copy() for _, _, a, b in spans]
        if spans:
            raw = raw.cut(spans[0][2], spans[-1][3])  # the parts' own values leave the step
        for (part, token, _, _), own in zip(spans, owns):
            raw = part.finish(step, raw, token, own)
            if raw is None:  # held until its loss is known (DDP)
                break
        if raw is not None:
            self.pending.append((step, raw))
        if len(self.pending) >= POOL_EVERY:
            self.trace._sync()  # through the Trace, which guards re-entry

    def release(self) -> None:
        """A new step ends: a step still held for its loss goes on without it (DDP)."""
        for part in self.parts:
            self.pending.extend(part.release())

    def add_loss(self, step: int, loss: Tensor | float, last_recorded: int) -> None:
        """The loss of step `step`, handed over after the step ended (a bound optimizer ended it)."""
        for part in self.parts:
            if part.holding(step):  # DDP: that step's reduction waited for its loss
                self.pending.extend(part.release(loss))
                return
        value = loss.detach() if isinstance(loss, Tensor) else float(loss)
        if self.pending and self.pending[-1][0] == step and self.pending[-1][1].recorded:
            self.pending[-1][1].loss = value  # read when pooled
        elif step == last_recorded and self.trace._n and self.trace._steps[self.trace._n - 1] == step:
            self.trace.set_step_metric("loss", float(value))  # already pooled (no flush for this)
            self.trace.set_step_metric("nonfinite_loss", float(not np.isfinite(float(value))))

    def close(self, step: int, clean: bool = True) -> None:
        """The parts let go (a held step is reduced unless closing on an exception); the last checks are read.

        Only the first call counts (the Probe closes on an exception with clean=False, then as usual).
        """
        if self.closed:
            return
        self.closed = True
        for part in self.parts:
            self.pending.extend(part.close(clean))
        tail = self.checks.tail()  # the checks of the steps after the last recorded one: one host copy
        if tail is not None:
            self.pending.append((step, tail))
        self.checks.close()
        if clean:  # every process is here: the checks of all of them (DDP ranks: one small collective)
            self.trace._sync()  # pooled: every fetched check row scanned
            for part in self.parts:
                if hasattr(part, "agree"):  # structure.py's part duck-types Part without it
                    self.checks.agree(part.agree)

    def pool(self) -> None:
        """Turn the buffered steps into Trace rows (numpy, many steps at once); the sinks see them."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        self.checks.scan([raw for _, raw in pending])
        recorded = [(step, raw) for step, raw in pending if raw.recorded]
        if not recorded:
            return
        layers = self.layout.layers
        self.trace.add_layers([layer.info() for layer in layers[len(self.trace._layers):]])
        pooled = pool_steps([raw for _, raw in recorded], len(layers), len(self.meta.get("blocks", ())))
        for (step, _), lv, sv, series in zip(recorded, pooled.layer, pooled.step, pooled.series):
            self.trace.append(step, lv, sv)
            for (name, key), values in series.items():
                self.trace.series.add(name, MODEL if key < 0 else layers[key].name, step, values)
        for sink in self.sinks:
            sink.write_new(self.trace)
