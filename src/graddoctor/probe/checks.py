"""Non-finite checks on EVERY step, recorded or not, with no host synchronisation.

`every=10` records one step in ten, but a run that diverges on step 7 must say so. On every
step the probe keeps three 0-d device values, each finite exactly when all is well:

- the loss, when the loop hands it over (probe.step(loss));
- the gradients: sum_p |g_p| (or, on CPU, sum_p sum(g_p); finite iff every gradient is),
  once the gradients are final: the optimizer's pre-hook, or the end of the step
  without one; not without an optimizer under a GradScaler (its skipped steps have inf
  gradients by design, and the scaler handles them);
- the sum of the model's input batch (its first tensor argument, when floating point; finite
  iff every element is, barring a float32 overflow beyond 3.4e38): a top-level forward
  pre-hook, training forwards only (not on a torch.compile'd model: no module hooks there).

The values wait in a list (no copy kernel, no sync) and ride in the next recorded step's one
host copy as rows of the check slots (slots.py: they cross DDP ranks like other sums), or
are read once at close (and agreed across DDP ranks then: distributed.py). The host keeps the
first bad step of each kind:
`trace.meta["nonfinite"] = {"first_step", "what": "loss" | "grad", "input_first_step"}`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from . import record
from .record import COUNT, INDEX, KEY, LENGTH, SLOT, WIDTH, RawStep
from .slots import CHECK_GRAD, CHECK_INPUT, CHECK_LOSS
from .stats import first_tensor


class Checks:
    """The every-step non-finite record of one Probe."""

    def __init__(self, model: nn.Module, hook_input: bool, meta: dict) -> None:
        self.meta = meta
        self.step = 0  # the step running now (the Probe sets it)
        self.forward_seen = False  # a training forward ran in this step (for autocast, below)
        self.autocast: str | None = None  # autocast dtype seen in this step's forward
        self._device_type = next(model.parameters()).device.type
        self._values: list[Tensor] = []  # 0-d float32, on the device
        self._keys: list[int] = []  # flat (slot, step) per value
        self._first: dict[int, int] = {}  # slot -> first step with a non-finite value
        self._handle = (model.register_forward_pre_hook(self._on_input, with_kwargs=True)
                        if hook_input else None)
        self._publish()

    # -- on every step ----------------------------------------------------------------------
    def _on_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not torch.is_grad_enabled():
            return  # evaluation passes are not training steps
        if not self.forward_seen:
            self.forward_seen = True
            on = torch.is_autocast_enabled(self._device_type)
            self.autocast = str(torch.get_autocast_dtype(self._device_type)).removeprefix("torch.") if on else None
        x = first_tensor(list(args) + list(kwargs.values()))
        if x is not None and x.is_floating_point() and x.numel():
            with torch.no_grad():
                self._put(CHECK_INPUT, self.step, x.sum(dtype=torch.float32))

    def loss(self, step: int, loss: Tensor | float) -> None:
        """The loss of step `step` (a tensor: checked on the device; a number: at once)."""
        if isinstance(loss, Tensor):
            self._put(CHECK_LOSS, step, loss.detach().reshape(()).float())
        elif not math.isfinite(float(loss)):
            self._first.setdefault(CHECK_LOSS, step)
            self._publish()

    def grads(self, step: int, grads: list[Tensor | None] | None = None, norms: Tensor | None = None) -> None:
        """The gradients of step `step` are final: their norms (if already taken) or the gradients (None: none)."""
        with torch.no_grad():
            if norms is None:
                grads = [g.coalesce()._values() if g.is_sparse else g for g in grads if g is not None]
                if not grads:
                    return
                # one pass over every gradient: per-tensor sums on CPU (~20 % cheaper than norms
                # here), one fused multi-tensor norm kernel elsewhere (sums would be a launch each)
                norms = torch.stack([g.sum(dtype=torch.float32) for g in grads] if grads[0].device.type == "cpu"
                                    else torch._foreach_norm(grads))
            self._put(CHECK_GRAD, step, norms.sum())

    def _put(self, slot: int, step: int, value: Tensor) -> None:
        self._values.append(value if value.dtype == torch.float32 else value.float())
        self._keys += (slot, step)

    # -- with a host copy -------------------------------------------------------------------
    def file(self, rec) -> None:
        """Put the values since the last host copy into this recorded step's copy, as check rows."""
        if not self._values:
            return
        start = rec.append(self._values)
        rec.chunks.append(self._rows(start))
        self._values, self._keys = [], []

    def _rows(self, start: int) -> np.ndarray:
        keys = np.array(self._keys, np.int64).reshape(-1, 2)
        rows = np.zeros((len(keys), WIDTH), np.int64)
        rows[:, SLOT], rows[:, KEY], rows[:, COUNT] = keys[:, 0], keys[:, 1], 0
        rows[:, INDEX], rows[:, LENGTH] = np.arange(start, start + len(keys)), 1
        return rows

    def tail(self) -> RawStep | None:
        """The values no recorded step carried (the steps after the last one): one host copy, at close."""
        if not self._values:
            return None
        out = RawStep(record.fetch([torch.stack(self._values)]), chunks=[self._rows(0)], recorded=False)
        self._values, self._keys = [], []
        return out

    def scan(self, raws: list[RawStep]) -> None:
        """Note the first non-finite step of each kind in these fetched steps' check rows."""
        for raw in raws:
            t = raw.table()
            rows = t[np.isin(t[:, SLOT], (CHECK_LOSS, CHECK_GRAD, CHECK_INPUT))]
            bad = rows[~np.isfinite(raw.values[rows[:, INDEX]])]
            for slot, step in bad[:, [SLOT, KEY]].tolist():
                if step < self._first.get(slot, step + 1):
                    self._first[slot] = step
        self._publish()

    def agree(self, combine) -> None:
        """Replace the first non-finite steps by `combine(first)` (slot -> step; e.g. over DDP ranks)."""
        self._first = dict(combine(dict(self._first)))
        self._publish()

    def _publish(self) -> None:
        loss, grad = self._first.get(CHECK_LOSS), self._first.get(CHECK_GRAD)
        first = min((s for s in (loss, grad) if s is not None), default=None)
        what = None if first is None else "loss" if loss == first else "grad"
        self.meta["nonfinite"] = {"first_step": first, "what": what, "input_first_step": self._first.get(CHECK_INPUT)}

    def close(self) -> None:
        """Remove the input hook."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
