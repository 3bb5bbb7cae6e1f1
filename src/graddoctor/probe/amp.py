"""Mixed precision: undo a GradScaler's loss scale in what the probe records.

`scaler.scale(loss).backward()` multiplies every gradient of the backward by the loss scale
S (2^16 at first), so the error signals the probe's tensor hooks catch are S times the true
ones. Parameter gradients are unscaled in place by `scaler.step(opt)` (its `unscale_` runs
before `optimizer.step()` and so before the probe's optimizer pre-hook) or by an explicit
`scaler.unscale_(opt)`: by the time the probe reads them, they are the true gradients.
So only the error signals (and the recurrent per-time-step series) are divided by S here,
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
from .pooling import DELTA, INPUT_GRAD, RawStep

SCALED_SLOTS = (DELTA, INPUT_GRAD)  # filed during backward: multiplied by the loss scale


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


def unscale(raw: RawStep, scale: float) -> RawStep:
    """The step with its error-signal norms divided by the loss scale."""
    if scale == 1.0:
        return raw
    table = np.concatenate([np.array(raw.rows, dtype=np.int64).reshape(-1, 4)] + list(raw.chunks))
    idx = table[np.isin(table[:, 0], SCALED_SLOTS), 3]
    values = raw.values.copy()
    values[np.unique(idx[idx >= 0])] /= scale
    return raw._replace(values=values)


class LossScale:
    """Follows one GradScaler through a recorded step: the scale at forward, and at the step's end."""

    def __init__(self, scaler: object) -> None:
        self.scaler = check_scaler(scaler)
        self._at_forward: Tensor | None = None

    def forward(self) -> None:
        """Called on each recorded forward; keeps the scale of the step's first one."""
        if self._at_forward is None:
            self._at_forward = current_scale(self.scaler)

    def take(self) -> list[Tensor]:
        """[scale at forward, scale now] for this step's host copy; resets for the next step."""
        now = current_scale(self.scaler)
        first, self._at_forward = (self._at_forward if self._at_forward is not None else now), None
        return [first.to(now.device), now]

    @staticmethod
    def skipped(at_forward: float, now: float, optimizer_skipped: bool) -> bool:
        """Did the scaler skip this step's optimizer step?"""
        return optimizer_skipped or now < at_forward or not np.isfinite(at_forward)
