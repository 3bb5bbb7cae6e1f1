"""The lab: every claim of the mission as a runnable experiment, and the sweep runner.

    from graddoctor.lab import run_experiment, render
    lab = run_experiment("depth", "graddoctor-runs/runs.db", quick=True)
    print(lab.conclusion.text); render.write(lab, "lab-out/")
"""
from .api import LabResult, run_experiment
from .conclude import Conclusion
from .experiments import EXPERIMENTS, Experiment, Size
from .grid import Job, expand
from .runner import Result, run_jobs
from .summary import RunSummary, summarise

__all__ = ["EXPERIMENTS", "Conclusion", "Experiment", "Job", "LabResult", "Result", "RunSummary", "Size",
           "expand", "run_experiment", "run_jobs", "summarise"]
