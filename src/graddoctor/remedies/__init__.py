"""Remedies (model surgery replayable on the user's class, training-loop settings) and treat()."""
from .base import Change, Patient, Remedy, Sample, StepSettings
from .registry import REMEDIES, expand, get
from .replay import apply_changes, load_treated, save_treated
from .result import TreatResult, Trial

__all__ = [
           "REMEDIES",
           "Change",
           "Patient",
           "Remedy",
           "Sample",
           "StepSettings",
           "TreatResult",
           "Trial",
           "apply_changes",
           "expand",
           "get",
           "load_treated",
           "save_treated",
]
