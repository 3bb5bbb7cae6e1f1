"""Diagnosis: pure rules over a Trace -> Diagnosis (findings, causes, remedies)."""
from .api import checkup, diagnose  # noqa: F401
from .findings import Cause, Diagnosis, Finding  # noqa: F401
