"""Mixed precision: undo a GradScaler's loss scale in what the probe records.

`scaler.scale(loss).backward()` multiplies every gradient of the backward by the loss scale
S (2^16 at first), so the error signals the probe's tensor hooks catch are S times the true
ones. Parameter gradients are unscaled in place by `scaler.step(opt)` (its `unscale_` runs
before `optimizer.step()` and so before the probe's optimizer pre-hook) or by an explicit
`scaler.unscale_(opt)`: by the time the probe reads them, they are the true gradients.
So only the error signals (the slots declared `loss_scaled` in slots.py: per layer, per
block, per time step) are divided by S here (S^2 for sums of squares),
with S read as it was during the step's forward pass: `scaler.update()` may change it before
the step ends.

A step whose optimizer step the scaler skipped (inf/NaN gradients at this scale: the scale
is being calibrated) trained nothing; it is left out of the Trace and its index is listed in
`trace.meta["amp_skipped_steps"]`. It is recognised when a bound optimizer did not step, or
when the scale dropped during the step (`scaler.update()` backs off after an overflow).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import GradDoctorError
from .parts import Part
from .record import SLOT, RawStep
from .slots import mask

LOSS_SCALED = mask(loss_scaled=True)  # filed during backward: multiplied by the loss scale
CHECKS = mask(axis="check")  # the every-step checks: kept from a skipped step


def check_scaler(scaler: object) -> object:
    """The scaler if it looks like torch.amp.GradScaler (or the cuda one), else a clear error."""
    if not all(hasattr(scaler, a) for a in ("scale", "is_enabled", "_scale", "_init_scale")):
        raise GradDoctorError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}; "
                              "pass the one whose scaler.scale(loss).backward() you call")
    return scaler


def current_scale(scaler: object) -> Tensor:
    """The loss scale the next scaler.scale(loss) uses, as a 0-d float32 tensor (no host sync)."""
    if not scaler.is_enabled():
        return torch.ones(())
    s = scaler._scale
    if s is None:  # scale() initialises it lazily, with _init_scale
        return torch.full((), float(scaler._init_scale))
    return s.detach().reshape(()).float().clone()


def skipped(at_forward: float, now: float, optimizer_skipped: bool) -> bool:
    """Did the scaler skip this step's optimizer step?"""
    return optimizer_skipped or now < at_forward or not np.isfinite(at_forward)


class LossScalePart(Part):
    """Follows one GradScaler through each recorded step: the scale at forward, and at the step's end."""

    wants_forward = True

    def __init__(self, scaler: object, meta: dict) -> None:
        self.scaler = check_scaler(scaler)
        self.meta = meta
        self._at_forward: Tensor | None = None
        meta["amp_skipped_steps"] = []

    def begin(self, rec, full: bool) -> None:
        self._at_forward = None

    def forward(self, layer: int, x: Tensor | None) -> None:
        if self._at_forward is None:  # the scale of the step's first recorded forward
            self._at_forward = current_scale(self.scaler)

    def file(self, rec) -> object:
        now = current_scale(self.scaler)
        first = self._at_forward if self._at_forward is not None else now
        rec.append([first.to(now.device), now])
        return rec.optimizer_skipped

    def finish(self, step: int, raw: RawStep, token: object, own: np.ndarray) -> RawStep | None:
        at_forward, now = float(own[0]), float(own[1])
        loss_ok = raw.loss is None or np.isfinite(float(raw.loss))  # a NaN loss is no scale problem
        if loss_ok and skipped(at_forward, now, bool(token)):
            self.meta["amp_skipped_steps"].append(int(step))
            out = raw.keep(CHECKS[raw.table()[:, SLOT]])  # the checks of the steps before still count
            out.recorded = False
            return out
        return raw.scaled(LOSS_SCALED, 1.0 / at_forward)
