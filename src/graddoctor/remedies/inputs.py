"""normalize_inputs: standardise the inputs with the training set's mean and std (cause input_scale)."""
from __future__ import annotations

import torch

from ..data import Dataset
from ..diagnose.findings import Diagnosis
from .base import Change, Patient

# Features whose training std is below this are constant: divided by 1, not by ~0.
MIN_STD = 1e-8
# Inputs already this close to zero mean / unit std are left alone.
TOLERANCE = 0.1


def input_stats(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std of the training inputs (std of constant features set to 1)."""
    x = data.x_train.double()
    mean, std = x.mean(0), x.std(0)
    std = torch.where(std > MIN_STD, std, torch.ones_like(std))
    dtype = data.x_train.dtype if data.x_train.is_floating_point() else torch.float32
    return mean.to(dtype), std.to(dtype)


class NormalizeInputs:
    """Put a Standardize wrapper in front of the network: model((x - mean) / std)."""

    name = "normalize_inputs"
    label = "normalize_inputs"

    def applies_to(self, patient: Patient, diagnosis: Diagnosis | None = None,
                   data: Dataset | None = None) -> bool:
        """True when there are training inputs and they are not standardised already."""
        if data is None or patient.input_stats is not None:
            return False
        mean, std = input_stats(data)
        return bool(mean.abs().max() > TOLERANCE or (std.double().log().abs() > TOLERANCE).any())

    def apply(self, patient: Patient, data: Dataset | None = None) -> Patient:
        """A Patient whose built network standardises its inputs (the stats travel in its state dict)."""
        if data is None:
            return patient.with_(self.label, [Change("input", "raw", "unchanged",
                                                     note="needs the training data to compute mean and std")])
        mean, std = input_stats(data)
        before = f"mean {float(data.x_train.float().mean()):.3g}, std {float(data.x_train.float().std()):.3g}"
        change = Change("input", before, "standardised per feature (mean 0, std 1)")
        return patient.with_(self.label, [change], input_stats=(mean, std))
