"""The lab: every claim of the mission as a runnable experiment, and the sweep runner.

    from graddoctor.lab import run_experiment, render
    lab = run_experiment("depth", "graddoctor-runs/runs.db", quick=True)
    print(lab.conclusion.text); render.write(lab, "lab-out/")
"""
from .api import LabResult, run_experiment  # noqa: F401
from .conclude import Conclusion  # noqa: F401
from .experiments import EXPERIMENTS, Experiment, Size  # noqa: F401
from .grid import Job, expand  # noqa: F401
from .runner import Result, run_jobs  # noqa: F401
from .summary import RunSummary, summarise  # noqa: F401

__all__ = ["EXPERIMENTS", "Conclusion", "Experiment", "Job", "LabResult", "Result", "RunSummary", "Size",
           "expand", "run_experiment", "run_jobs", "summarise"]
