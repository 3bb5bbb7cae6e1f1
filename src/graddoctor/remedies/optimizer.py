"""tune_optimizer: learning rate down (exploding) or up (stalled), momentum on/off.

With graddoctor's own optimizer (a TrainConfig) the config changes; with the user's
make_optimizer, the loop scales every parameter group's learning rate (loop.py), so the
user's optimizer, its other settings and its scheduler stay as they are.
"""
from __future__ import annotations

from dataclasses import replace

from ..diagnose.findings import Diagnosis
from ..errors import unknown
from .base import Change, Patient, Sample

# Moves: learning rate x factor (a decade or two: rates are searched on a log grid, and one
# off by less than ~3x rarely turns a diverging or stalled run into a healthy one), or
# momentum toggled between 0 and MOMENTUM_ON.
MOVES: dict[str, float | None] = {"lr/10": 0.1, "lr/100": 0.01, "lr*10": 10.0, "momentum": None}
MOMENTUM_ON = 0.9  # the usual SGD momentum (Sutskever et al. 2013)


class TuneOptimizer:
    """Change the learning rate (or SGD momentum); the new settings are in the result."""

    name = "tune_optimizer"

    def __init__(self, move: str = "lr/10") -> None:
        if move not in MOVES:
            raise unknown("tune_optimizer move", move, MOVES)
        self.move = move
        self.label = f"tune_optimizer({move})"

    def why_not(self, patient: Patient, diagnosis: Diagnosis | None = None, sample: Sample | None = None) -> str:
        """Momentum toggling needs graddoctor's SGD; the learning-rate moves always apply."""
        if self.move != "momentum":
            return ""
        if patient.own_optimizer:
            return "the optimizer is your make_optimizer's: set its momentum there"
        return "" if patient.config.optimizer == "sgd" else f"{patient.config.optimizer} has no momentum setting"

    def apply(self, patient: Patient, sample: Sample | None = None) -> Patient:
        """A Patient with the new optimizer settings."""
        c = patient.config
        factor = MOVES[self.move]
        if factor is None:
            m = 0.0 if c.momentum > 0 else MOMENTUM_ON
            return patient.with_(self.label, [Change("config.momentum", f"{c.momentum:g}", f"{m:g}")],
                                 config=replace(c, momentum=m))
        if patient.own_optimizer:
            s = patient.settings.lr_scale
            change = Change("step.lr", f"your lr x {s:g}", f"your lr x {s * factor:g}")
            return patient.with_settings(self.label, change, lr_scale=s * factor)
        return patient.with_(self.label, [Change("config.lr", f"{c.lr:g}", f"{c.lr * factor:g}")],
                             config=replace(c, lr=c.lr * factor))
