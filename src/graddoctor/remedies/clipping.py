"""clip_gradients: clip the global gradient norm (exploding gradients)."""
from __future__ import annotations

from dataclasses import replace

from ..diagnose.findings import Diagnosis
from ..errors import GradDoctorError
from .base import Change, Patient, Sample

# Pascanu et al. (2013) clip at a norm around the typical gradient norm; 1.0 is the common
# default (e.g. in Transformer and RNN recipes) for losses of order one.
DEFAULT_MAX_NORM = 1.0


class ClipGradients:
    """Every step's global gradient norm is clipped to at most max_norm."""

    name = "clip_gradients"

    def __init__(self, max_norm: float = DEFAULT_MAX_NORM) -> None:
        if not max_norm > 0:
            raise GradDoctorError(f"clip_gradients max_norm must be positive, got {max_norm}")
        self.max_norm = max_norm
        self.label = "clip_gradients" if max_norm == DEFAULT_MAX_NORM else f"clip_gradients({max_norm:g})"

    def why_not(self, patient: Patient, diagnosis: Diagnosis | None = None, sample: Sample | None = None) -> str:
        """'' unless the training already clips at this norm or tighter."""
        c = patient.step_settings().clip_norm
        return "" if c is None or c > self.max_norm else f"the gradients are clipped at norm {c:g} already"

    def apply(self, patient: Patient, sample: Sample | None = None) -> Patient:
        """A Patient whose training clips the gradient norm."""
        before = str(patient.step_settings().clip_norm)
        if patient.own_optimizer:
            change = Change("step.clip_grad_norm", before, f"{self.max_norm:g}")
            return patient.with_settings(self.label, change, clip_norm=self.max_norm)
        c = patient.config
        return patient.with_(self.label, [Change("config.clip_norm", before, f"{self.max_norm:g}")],
                             config=replace(c, clip_norm=self.max_norm))
