"""loss_scale and bf16: the two repairs for float16 gradients that underflow to zero.

float16's smallest normal number is 6.1e-5 (subnormals to 6e-8): small gradients flush to
zero. Dynamic loss scaling (Micikevicius et al. 2018) multiplies the loss before backward
and divides the gradients after (loop.LossScaler); bfloat16 has float32's exponent range
and needs no scaling (at 3 fewer significant digits).
"""
from __future__ import annotations

import torch

from ..diagnose.findings import Diagnosis
from .base import Change, Patient, Sample
from .loop import LossScaler
from .surgery import current


def _half(patient: Patient, sample: Sample) -> tuple[bool, bool]:
    """(some parameter is float16, some layer computes in float16: parameters or autocast)."""
    net, flow = current(patient, sample)
    params = any(p.dtype == torch.float16 for p in net.parameters())
    return params, params or any(d == torch.float16 for d in flow.dtypes.values())


class LossScale:
    """Dynamic loss scaling around the user's step (GradScaler's policy, any parameter dtype)."""

    name = "loss_scale"
    label = "loss_scale"

    def why_not(self, patient: Patient, diagnosis: Diagnosis | None = None, sample: Sample | None = None) -> str:
        """'' when the network computes in float16 without a loss scale; else why not."""
        if patient.settings.loss_scale:
            return "the loss is scaled already"
        if sample is None:
            return "needs a sample batch to see the dtypes"
        return "" if _half(patient, sample)[1] else "nothing computes in float16 (no underflow to prevent)"

    def apply(self, patient: Patient, sample: Sample | None = None) -> Patient:
        """A Patient trained with dynamic loss scaling."""
        change = Change("step.loss_scale", "none", f"dynamic (from 2^{int(LossScaler.INIT).bit_length() - 1}, "
                                                   "halved on overflow; torch.amp.GradScaler for float32 "
                                                   "parameters)")
        return patient.with_settings(self.label, change, loss_scale=True)


class BFloat16:
    """Parameters (and so the computation) in bfloat16 instead of float16."""

    name = "bf16"
    label = "bf16"

    def why_not(self, patient: Patient, diagnosis: Diagnosis | None = None, sample: Sample | None = None) -> str:
        """'' when some parameter is float16; else why not."""
        if sample is None:
            return "needs a sample batch to see the dtypes"
        params, computes = _half(patient, sample)
        if params:
            return ""
        if computes:
            return "float16 comes from autocast in your step: use torch.autocast(..., dtype=torch.bfloat16) there"
        return "no float16 parameters"

    def apply(self, patient: Patient, sample: Sample | None = None) -> Patient:
        """A Patient whose network is cast to bfloat16."""
        return patient.with_(self.label, [Change("<model>", "float16 parameters", "bfloat16", op="dtype",
                                                 args={"dtype": "bfloat16"})])
