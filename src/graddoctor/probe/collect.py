"""One recorded step: what the hooks measured, as 0-d device tensors, until one host copy.

Every hook reduces what it sees to a few 0-d tensors right away (no activation or gradient
is kept), stacks them into a vector while they are still in cache, and files one row per
number: (slot, layer, numel, index), see pooling.py. `finish` copies every vector of the step
to the host at once and returns a RawStep; turning RawSteps into Trace rows is pooling's job.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import Tensor
from torch.autograd.variable import Variable

from ..errors import GradDoctorError
from . import stats
from .layout import ParamPlan
from .pooling import (
    BEFORE,
    CHANGE,
    DEAD,
    DELTA,
    DERIV,
    DERIV_SQ,
    GRAD_B,
    GRAD_NONFINITE,
    GRAD_W,
    INPUT_GRAD,
    OUT,
    OUT_NONFINITE,
    SATURATED,
    WEIGHT,
    ZERO,
    RawStep,
)
from .scratch import Scratch


def fetch(values: list[Tensor]) -> np.ndarray:
    """1-D device tensors -> one float64 numpy array, with one device->host copy per device."""
    if not values:
        return np.zeros(0)
    try:  # common case: one device; cat promotes mixed float dtypes
        return torch.cat(values).to(torch.float64).cpu().numpy()  # note: the host sync point
    except RuntimeError:  # tensors on several devices
        sizes = np.cumsum([0] + [len(v) for v in values])
        out = np.empty(sizes[-1])
        by_device: dict[torch.device, list[int]] = {}
        for i, v in enumerate(values):
            by_device.setdefault(v.device, []).append(i)
        for idx in by_device.values():
            host = torch.cat([values[i] for i in idx]).to(torch.float64).cpu().numpy()
            out[np.concatenate([np.arange(sizes[i], sizes[i + 1]) for i in idx])] = host
        return out


class StepRecord:
    """Everything the hooks measured in one recorded step, filed by (slot, layer)."""

    def __init__(self) -> None:
        self.values: list[Tensor] = []  # 1-D device tensors, fetched by finish()
        self.size = 0  # their total length
        self.rows: list[int] = []  # flat (slot, layer, numel, value index) quadruples
        self.chunks: list[np.ndarray] = []  # the same as (k, 4) blocks (parameters, signals)
        self.calls: list[int] = []  # flat (layer, numel, i_mean, i_centred) per input seen
        self.loss: Tensor | float | None = None
        self._grads: tuple[int, np.ndarray, list[Tensor]] | None = None  # (start, layers, grads)
        self._caught: list[Tensor] = []  # norms of the error signals of the running backward
        self._keys: list[int] = []  # flat (slot, layer, numel, position in _caught) of each
        self.backward_open = False  # a backward started and has not finished (or raised)
        self.params_done = False
        self.closed = False
        self.scratch = Scratch()  # reused memory for the forward hooks' temporaries

    def _vector(self, scalars: list[Tensor] | Tensor) -> int:
        """Stack 0-d tensors (or take a vector) now, while they are in cache; returns its offset."""
        start = self.size
        self.values.append(scalars if isinstance(scalars, Tensor) else torch.stack(scalars))
        self.size += len(scalars)
        return start

    def _file_many(self, slot: np.ndarray | int, layer: np.ndarray, numel: np.ndarray | int,
                   scalars: list[Tensor] | Tensor) -> int:
        k, start = len(scalars), self._vector(scalars)
        rows = np.empty((k, 4), np.int64)  # column by column: ~4x cheaper than np.column_stack
        rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3] = slot, layer, numel, np.arange(start, start + k)
        self.chunks.append(rows)
        return start

    # -- hooks ----------------------------------------------------------------------------
    def forward(self, layer: int, x: Tensor | None, source: stats.Source | None, y: Tensor | None) -> None:
        """Reduce one call's input and output at once; hook their gradients."""
        scalars: list[Tensor] = []
        rows, at = self.rows, self.size  # value index of the next scalar
        with torch.no_grad():
            if x is not None and x.is_floating_point() and x.numel():
                mean, centred, dead, sat, d_norm, d_sq = stats.input_stats(x, source, self.scratch)
                n = x.numel()
                self.calls += (layer, n, at, at + 1)
                scalars += (mean, centred, dead)
                rows += (DEAD, layer, stats.per_sample(x), at + 2)
                at += 3
                if isinstance(sat, Tensor):
                    scalars.append(sat)
                    rows += (SATURATED, layer, n, at)
                    at += 1
                elif sat is not None:  # a known non-saturating activation: 0, no tensor needed
                    rows += (SATURATED, layer, n, ZERO)
                for slot, value in ((DERIV, d_norm), (DERIV_SQ, d_sq)):
                    if value is not None:
                        scalars.append(value)
                        rows += (slot, layer, n, at)
                        at += 1
            if y is not None and y.is_floating_point() and y.numel():
                scalars += stats.output_stats(y, self.scratch)
                rows += (OUT, layer, y.numel(), at, OUT_NONFINITE, layer, 0, at + 1)
            if scalars:
                self._vector(scalars)
        if y is not None and y.requires_grad:
            y.register_hook(partial(self._grad, layer, DELTA))
        if x is not None and x.requires_grad:
            x.register_hook(partial(self._grad, layer, INPUT_GRAD))

    def _grad(self, layer: int, slot: int, g: Tensor) -> None:
        if self.closed:
            return
        if not self.backward_open:  # first signal of this backward: file all when it ends
            self.backward_open = True
            Variable._execution_engine.queue_callback(self._end_backward)
            self.scratch.clear()  # no activation statistics during backward
        self._keys += (slot, layer, g.numel(), len(self._caught))
        # reduced at once, while in cache; half precision in float32: a loss-scaled fp16 norm
        # overflows at 65504 (amp.py divides the scale out afterwards)
        self._caught.append(torch.linalg.vector_norm(g.detach(), dtype=torch.float32 if g.element_size() < 4 else None))

    def _end_backward(self) -> None:
        """Runs once the backward pass finished (never if it raised)."""
        if not self.closed and self._caught:
            rows = np.array(self._keys, dtype=np.int64).reshape(-1, 4)
            rows[:, 3] += self._vector(self._caught)
            self.chunks.append(rows)
        self._caught, self._keys = [], []
        self.backward_open = False

    # -- parameters -----------------------------------------------------------------------
    def params(self, plan: ParamPlan, weight_norms: list[Tensor] | None = None) -> int:
        """File gradient norms and weight norms; returns the index of the first weight norm."""
        grads = [p.grad for p in plan.params]
        have = np.array([g is not None for g in grads], dtype=bool)
        grads = [g.coalesce()._values() if g.is_sparse else g for g in grads if g is not None]
        with torch.no_grad():
            if grads:
                start = self._file_many(np.where(plan.bias[have], GRAD_B, GRAD_W), plan.layer[have],
                                        plan.numel[have], torch._foreach_norm(grads))
                self._grads = (start, plan.layer[have], grads)
            if weight_norms is None:
                weight_norms = list(torch._foreach_norm(plan.weights)) if plan.weights else []
        self.params_done = True
        if not plan.weights:
            return self.size
        return self._file_many(WEIGHT, plan.w_layer, plan.w_numel, weight_norms)

    def update(self, layer: np.ndarray, change_norms: list[Tensor] | Tensor, before_index: np.ndarray) -> None:
        """File the norms of the weight changes made by the optimizer step, with the norms before."""
        self._file_many(CHANGE, layer, 0, change_norms)
        rows = np.zeros((len(layer), 4), np.int64)
        rows[:, 0], rows[:, 1], rows[:, 3] = BEFORE, layer, before_index
        self.chunks.append(rows)

    def set_loss(self, loss: Tensor | float) -> None:
        """File the step's loss."""
        if isinstance(loss, Tensor):
            if loss.numel() != 1:
                raise GradDoctorError(f"probe.step(loss) needs a scalar loss, got shape {tuple(loss.shape)}")
            loss = loss.detach().reshape(1).float()
        self.loss = loss

    # -- the one host copy ----------------------------------------------------------------
    def finish(self) -> RawStep:
        """Copy the step's numbers to the host (one sync) and hand them over for pooling."""
        self.closed = True
        self.scratch.clear()
        if isinstance(self.loss, Tensor):
            self._vector([self.loss[0]])
        v = fetch(self.values)
        loss = v[-1] if isinstance(self.loss, Tensor) else self.loss
        if self._grads is not None:
            start, layers, grads = self._grads
            bad = np.flatnonzero(~np.isfinite(v[start:start + len(grads)]))
            if len(bad):  # rare: a second host copy, only on steps with a non-finite gradient norm
                counts = fetch([torch.stack([stats.nonfinite_count(grads[i]) for i in bad])])
                for layer, j in zip(layers[bad], range(len(v), len(v) + len(bad))):
                    self.rows += (GRAD_NONFINITE, int(layer), 0, j)
                v = np.concatenate([v, counts])
        self.values, self._grads = [], None
        return RawStep(v, self.rows, self.chunks, self.calls, None if loss is None else float(loss))
