"""Remedies (model surgery on copies, config changes) and the treat() loop that measures them."""
from .base import Change, Patient, Remedy, Standardize
from .registry import REMEDIES, expand, get
from .result import TreatResult, Trial

__all__ = [
           "REMEDIES",
           "Change",
           "Patient",
           "Remedy",
           "Standardize",
           "TreatResult",
           "Trial",
           "expand",
           "get",
]
