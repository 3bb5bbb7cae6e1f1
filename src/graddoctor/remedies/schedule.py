"""warmup: the learning rate ramps up linearly over the first steps (unstable early training)."""
from __future__ import annotations

from ..diagnose.findings import Diagnosis
from .base import Change, Patient, Sample

# Share of the candidate's step budget spent warming up. Warmup is what makes post-LN
# transformers trainable at their usual rates (Xiong et al. 2020; Vaswani et al. 2017 warm up
# 4000 of 100k steps); treat's budget is a short run, so it warms up over a fifth of it.
WARMUP_FRACTION = 0.2
MIN_STEPS = 2


def warmup_steps(budget_steps: int) -> int:
    """Steps of warmup for a candidate trained `budget_steps` steps."""
    return max(MIN_STEPS, round(budget_steps * WARMUP_FRACTION))


class Warmup:
    """Scale every parameter group's lr by (step + 1) / W for the first W steps (then 1)."""

    name = "warmup"
    label = "warmup"

    def why_not(self, patient: Patient, diagnosis: Diagnosis | None = None, sample: Sample | None = None) -> str:
        """'' unless the training warms up already."""
        if patient.settings.warmup_steps:
            return f"the learning rate warms up already ({patient.settings.warmup_steps} steps)"
        return ""

    def apply(self, patient: Patient, sample: Sample | None = None) -> Patient:
        """A Patient whose learning rate warms up over WARMUP_FRACTION of the budget."""
        steps = warmup_steps(sample.budget_steps if sample is not None and sample.budget_steps else 60)
        change = Change("step.lr_warmup", "none", f"linear from lr/{steps} to lr over the first {steps} steps")
        return patient.with_settings(self.label, change, warmup_steps=steps)
