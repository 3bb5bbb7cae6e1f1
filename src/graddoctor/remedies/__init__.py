"""Remedies (model surgery on copies, config changes) and the treat() loop that measures them."""
from .base import Change, Patient, Remedy, Standardize
from .registry import CAUSE_REMEDIES, REMEDIES, expand, get
from .result import TreatResult, Trial

__all__ = ["CAUSE_REMEDIES", "Change", "Patient", "REMEDIES", "Remedy", "Standardize", "TreatResult", "Trial",
           "expand", "get"]
