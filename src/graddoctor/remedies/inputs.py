"""normalize_inputs: standardise the inputs with the training set's mean and std (cause input_scale)."""
from __future__ import annotations

import torch

from ..data import Dataset
from ..diagnose.findings import Diagnosis
from .base import Change, Patient, Sample

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
    """The network standardises its inputs: (x - mean) / std, with the training set's statistics."""

    name = "normalize_inputs"
    label = "normalize_inputs"

    def why_not(self, patient: Patient, diagnosis: Diagnosis | None = None, sample: Sample | None = None) -> str:
        """'' when the training inputs are in memory and not standardised; else why not."""
        data = sample.dataset if sample is not None else None
        if data is None:
            return "needs the inputs in memory (a Dataset or (inputs, targets)); standardise streamed data " \
                   "in your data pipeline"
        if any(c.op == "standardize" for c in patient.changes):
            return "the inputs are standardised already"
        if not data.x_train.is_floating_point():
            return "the inputs are not real numbers (indices or tokens)"
        mean, std = input_stats(data)
        if mean.abs().max() > TOLERANCE or (std.double().log().abs() > TOLERANCE).any():
            return ""
        return "the inputs are standardised already (mean ~0, std ~1 per feature)"

    def apply(self, patient: Patient, sample: Sample | None = None) -> Patient:
        """The network gets the statistics as buffers and standardises what it is given."""
        why = self.why_not(patient, None, sample)
        if why:
            return patient.with_(self.label, [Change("input", "raw", "unchanged", note=why)])
        data = sample.dataset
        mean, std = input_stats(data)
        x = data.x_train.float()
        change = Change("input", f"mean {float(x.mean()):.3g}, std {float(x.std()):.3g}",
                        "standardised per feature (mean 0, std 1)", op="standardize",
                        args={"mean": mean.tolist(), "std": std.tolist()})
        return patient.with_(self.label, [change])
