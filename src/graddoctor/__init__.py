"""graddoctor: find, explain and fix vanishing and exploding gradients in PyTorch models."""
from __future__ import annotations

import os
import sys

# OpenMP's default spin-waiting makes small torch ops stall on shared 2-core machines
# (a 5 ms step seen taking 790 ms). Only takes effect if torch is not imported yet.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .data import Dataset, from_loader, from_tensors  # noqa: E402
from .diagnose.api import checkup, diagnose  # noqa: E402  (the function shadows the subpackage name)
from .diagnose.findings import Cause, Diagnosis, Finding  # noqa: E402
from .errors import GradDoctorError  # noqa: E402
from .nets import NetSpec, build  # noqa: E402
from .probe.probe import Probe, watch  # noqa: E402
from .probe.trace import Trace  # noqa: E402
from .remedies.treat import treat  # noqa: E402
from .report import render_all, write_report  # noqa: E402
from .store import RunStore  # noqa: E402
from .theory import predict  # noqa: E402
from .training import History, TrainConfig, train  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "Cause", "Dataset", "Diagnosis", "Finding", "GradDoctorError", "History", "NetSpec", "Probe", "RunStore",
    "Trace", "TrainConfig", "build", "checkup", "diagnose", "from_loader", "from_tensors", "predict",
    "render_all", "train", "treat", "watch", "write_report",
]
