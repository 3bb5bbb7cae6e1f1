"""clip_gradients: clip the global gradient norm (exploding gradients)."""
from __future__ import annotations

from dataclasses import replace

from ..data import Dataset
from ..diagnose.findings import Diagnosis
from ..errors import GradDoctorError
from .base import Change, Patient

# Pascanu et al. (2013) clip at a norm around the typical gradient norm; 1.0 is the common
# default (e.g. in Transformer and RNN recipes) for losses of order one.
DEFAULT_MAX_NORM = 1.0


class ClipGradients:
    """Set TrainConfig.clip_norm so every step's global gradient norm is at most max_norm."""

    name = "clip_gradients"

    def __init__(self, max_norm: float = DEFAULT_MAX_NORM) -> None:
        if not max_norm > 0:
            raise GradDoctorError(f"clip_gradients max_norm must be positive, got {max_norm}")
        self.max_norm = max_norm
        self.label = "clip_gradients" if max_norm == DEFAULT_MAX_NORM else f"clip_gradients({max_norm:g})"

    def applies_to(self, patient: Patient, diagnosis: Diagnosis | None = None,
                   data: Dataset | None = None) -> bool:
        """True unless the config already clips at this norm or tighter."""
        c = patient.config.clip_norm
        return c is None or c > self.max_norm

    def apply(self, patient: Patient, data: Dataset | None = None) -> Patient:
        """A Patient whose TrainConfig clips the gradient norm."""
        c = patient.config
        return patient.with_(self.label, [Change("config.clip_norm", str(c.clip_norm), f"{self.max_norm:g}")],
                             config=replace(c, clip_norm=self.max_norm))
