"""One recorded step as the hooks see it: reduce each tensor at once, file the numbers (record.py).

Every hook reduces what it sees to a few 0-d tensors right away (no activation or gradient
is kept), stacks them into a vector while they are still in cache, and files one row per
number (slots.py). `finish` copies every value of the step to the host at once.
"""
from __future__ import annotations

import weakref
from functools import partial

import numpy as np
import torch
from torch import Tensor
from torch.autograd.variable import Variable

from ..errors import GradDoctorError
from . import record, stats
from .layout import ParamPlan
from .record import RawStep, Record
from .scratch import Scratch
from .slots import ACT_CENTRED as _ACT_CENTRED  # noqa: F401 - filed right after ACT_MEAN (index + 1)
from .slots import (
    ACT_MEAN,
    BEFORE,
    CHANGE,
    DEAD,
    DELTA,
    DERIV,
    DERIV_SQ,
    GRAD_B,
    GRAD_NONFINITE,
    GRAD_W,
    GRAD_ZERO,
    INPUT_GRAD,
    OUT,
    OUT_NONFINITE,
    SATURATED,
    WEIGHT,
    ZERO,
)

HOST_READS = True  # CPU tensors: read small results to skip work they make unnecessary (stats.py)


class StepRecord(Record):
    """Everything the hooks measured in one recorded step, filed by (slot, key)."""

    def __init__(self) -> None:
        super().__init__()
        self._grads: tuple[int, np.ndarray, list[Tensor]] | None = None  # (start, layers, grads)
        self._zeros: tuple[int, np.ndarray] | None = None  # (start, numel) of the nonzero counts
        self.grad_vector: Tensor | None = None  # the parameter-gradient norms, stacked (device)
        self._caught: list[Tensor] = []  # norms of the error signals of the running backward
        self._hooked: dict[int, tuple] = {}  # id(tensor) -> (weakref, version, targets) hooked this step
        self._inputs: dict[int, tuple] = {}  # id(tensor) -> (weakref, version, its input rows) reduced this step
        self._keys: list[int] = []  # flat rows of each, index = position in _caught
        self.backward_open = False  # a backward started and has not finished (or raised)
        self.params_done = False
        self.optimizer_skipped = False  # a bound optimizer did not step (set when the step ends)
        self.closed = False
        self.scratch = Scratch()  # reused memory for the forward hooks' temporaries

    # -- hooks ----------------------------------------------------------------------------
    def forward(self, layer: int, x: Tensor | None, source: stats.Source | None, y: Tensor | None) -> None:
        """Reduce one call's input and output at once; hook their gradients."""
        scalars: list[Tensor] = []
        rows = self.rows
        at = self.size  # value index of the next scalar

        def put(slot: int, count: int, value: Tensor | int | None) -> None:
            if isinstance(value, Tensor):
                rows.extend((slot, layer, count, at + len(scalars), 1))
                scalars.append(value)
            elif value is not None:  # a number known on the host (0: no tensor, no number)
                rows.extend((slot, layer, count, self.number(value) if value else ZERO, 1))

        with torch.no_grad():
            seen = self._inputs.get(id(x)) if x is not None else None
            if seen is not None and seen[0]() is x and seen[1] == x._version:
                # the same tensor as another layer's input (q/k/v projections, a ResNet shortcut):
                # the same numbers, filed again under this layer (rows may share a value)
                for slot, count, index in seen[2]:
                    rows.extend((slot, layer, count, index, 1))
            elif x is not None and x.is_floating_point() and x.numel():
                host = HOST_READS and x.is_cpu
                # what the activation produced: without the zero padding added to it (MobileNet, EfficientNet)
                xa = stats.interior(x, source.pad) if source is not None else x
                mean, centred, dead, sat, d_norm, d_sq = stats.input_stats(xa, source, self.scratch, host)
                n = xa.numel()
                first = len(rows)
                put(ACT_MEAN, n, mean)
                put(ACT_MEAN + 1, n, centred)
                put(DEAD, stats.per_sample(xa), dead)
                put(SATURATED, n, sat)
                put(DERIV, n, d_norm)
                put(DERIV_SQ, n, d_sq)
                filed = rows[first:]
                self._inputs[id(x)] = (weakref.ref(x), x._version,
                                       [(filed[i], filed[i + 2], filed[i + 3]) for i in range(0, len(filed), 5)])
            if y is not None and y.is_floating_point() and y.numel():
                norm, bad = stats.output_stats(y, self.scratch, HOST_READS and y.is_cpu)
                put(OUT, y.numel(), norm)
                put(OUT_NONFINITE, 0, bad)
            if scalars:
                self.append(scalars)
        if y is not None and y.requires_grad:
            self.hook(y, layer, DELTA)
        if x is not None and x.requires_grad:
            self.hook(x, layer, INPUT_GRAD)

    def hook(self, t: Tensor, key: int, slot: int) -> None:
        """File the norm of dL/dt under (slot, key) when backward computes it.

        A tensor that is one layer's output and the next one's input (Conv -> BatchNorm,
        LayerNorm -> Linear) gets one hook and one norm for both rows: a tensor hook sees the
        gradient summed over all uses. Same object at the same version only (an in-place op in
        between, e.g. ReLU(inplace=True), makes it another node of the graph).
        """
        entry = self._hooked.get(id(t))
        if entry is not None and entry[0]() is t and entry[1] == t._version:
            entry[2].append((slot, key))
            return
        targets = [(slot, key)]
        t.register_hook(partial(self.signal_all, targets))
        self._hooked[id(t)] = (weakref.ref(t), t._version, targets)

    def signal(self, key: int, slot: int, g: Tensor) -> None:
        """A tensor hook: file the norm of an error signal as it arrives during backward."""
        self.signal_all([(slot, key)], g)

    def signal_all(self, targets: list[tuple[int, int]], g: Tensor) -> None:
        """A tensor hook: one norm of the error signal, filed under every (slot, key) in targets."""
        if self.closed:
            return
        if not self.backward_open:  # first signal of this backward: file all when it ends
            self.backward_open = True
            Variable._execution_engine.queue_callback(self._end_backward)
            self.scratch.clear()  # no activation statistics during backward
            self._hooked, self._inputs = {}, {}
        at, n = len(self._caught), g.numel()
        for slot, key in targets:
            self._keys += (slot, key, n, at, 1)
        # reduced at once, while in cache; half precision in float32: a loss-scaled fp16 norm
        # overflows at 65504 (amp.py divides the scale out afterwards)
        self._caught.append(torch.linalg.vector_norm(g.detach(), dtype=torch.float32 if g.element_size() < 4 else None))

    def _end_backward(self) -> None:
        """Runs once the backward pass finished (never if it raised)."""
        if not self.closed and self._caught:
            rows = np.array(self._keys, dtype=np.int64).reshape(-1, 5)
            rows[:, 3] += self.append(self._caught)
            self.chunks.append(rows)
        self._caught, self._keys = [], []
        self.backward_open = False

    # -- parameters -----------------------------------------------------------------------
    def params(self, plan: ParamPlan, weight_norms: list[Tensor] | None = None, zeros: bool = False) -> int:
        """File gradient norms (and zero counts) and weight norms; returns the index of the first weight norm."""
        grads = plan.grads()
        have = np.array([g is not None for g in grads], dtype=bool)
        grads = [g.coalesce()._values() if g.is_sparse else g for g in grads if g is not None]
        with torch.no_grad():
            if grads:
                start = self.file_many(np.where(plan.bias[have], GRAD_B, GRAD_W), plan.layer[have],
                                       plan.numel[have], torch._foreach_norm(grads))
                self._grads = (start, plan.layer[have], grads)
                self.grad_vector = self.values[-1]
                if zeros:  # exactly-zero gradient elements (16-bit underflow): one count kernel each;
                    # filed as nonzero counts, turned into zero counts on the host (finish)
                    nonzero = torch.stack([torch.count_nonzero(g) for g in grads])
                    self._zeros = (self.file_many(GRAD_ZERO, plan.layer[have], plan.numel[have], nonzero),
                                   plan.numel[have])
            if weight_norms is None:
                weight_norms = list(torch._foreach_norm(plan.weight_tensors())) if plan.weights else []
        self.params_done = True
        if not plan.weights:
            return self.size
        return self.file_many(WEIGHT, plan.w_layer, plan.w_numel, weight_norms)

    def update(self, layer: np.ndarray, change_norms: list[Tensor] | Tensor, before_index: np.ndarray) -> None:
        """File the norms of the weight changes made by the optimizer step, with the norms before."""
        self.file_many(CHANGE, layer, 0, change_norms)
        rows = np.zeros((len(layer), 5), np.int64)
        rows[:, 0], rows[:, 1], rows[:, 3], rows[:, 4] = BEFORE, layer, before_index, 1
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
        """Copy the step's numbers to the host (one sync) and hand them over."""
        self.closed = True
        self.scratch.clear()
        loss_at = self.append(self.loss) if isinstance(self.loss, Tensor) else -1
        raw = self.fetch()
        if loss_at >= 0:
            raw.loss = float(raw.values[loss_at])
        if self._zeros is not None:
            start, numel = self._zeros
            raw.values[start:start + len(numel)] = numel - raw.values[start:start + len(numel)]
        if self._grads is not None:
            start, layers, grads = self._grads
            bad = np.flatnonzero(~np.isfinite(raw.values[start:start + len(grads)]))
            if len(bad):  # rare: a second host copy, only on steps with a non-finite gradient norm
                counts = record.fetch([torch.stack([stats.nonfinite_count(grads[i]) for i in bad])])
                for layer, j in zip(layers[bad], range(len(raw.values), len(raw.values) + len(bad))):
                    raw.rows += (GRAD_NONFINITE, int(layer), 0, j, 1)
                raw.values = np.concatenate([raw.values, counts])
        self._grads = None
        return raw
