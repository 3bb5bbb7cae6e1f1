"""graddoctor: find, explain and fix vanishing and exploding gradients in PyTorch models."""
from __future__ import annotations

import os
import sys

# OpenMP's default spin-waiting makes small torch ops stall on shared 2-core machines
# (a 5 ms step seen taking 790 ms). Only takes effect if torch is not imported yet.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .data import Dataset, from_loader, from_tensors
from .diagnose.api import checkup, diagnose
from .diagnose.findings import Cause, Diagnosis, Finding
from .errors import GradDoctorError
from .nets import NetSpec, build
from .probe.probe import Probe, watch
from .probe.trace import Trace
from .remedies.replay import apply_changes, load_treated
from .remedies.treat import treat
from .report import render_all, write_report
from .store import RunStore
from .theory import predict
from .training import History, TrainConfig, train

__version__ = "0.1.0"
__all__ = [
    "Cause", "Dataset", "Diagnosis", "Finding", "GradDoctorError", "History", "NetSpec", "Probe", "RunStore",
    "Trace", "TrainConfig", "apply_changes", "build", "checkup", "diagnose", "from_loader", "from_tensors",
    "load_treated", "predict",
    "render_all", "train", "treat", "watch", "write_report",
]
