"""run_experiment(name): the grid through the runner, the numbers, the conclusion."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..store import RunStore
from . import conclude, dynamics, experiments, papers
from .conclude import Conclusion
from .experiments import SEEDS, Experiment
from .runner import Result, dataset, run_jobs
from .summary import RunSummary, summarise

# experiment name -> its conclusion from the runs' numbers (pure functions)
CONCLUDERS: dict[str, Callable[[list[RunSummary]], Conclusion]] = {
    "activations": conclude.activations_, "depth": conclude.depth, "init": conclude.init,
    "batchnorm": conclude.batchnorm, "residual": dynamics.residual, "optimizer": dynamics.optimizer,
    "he2015": papers.he2015, "glorot2010": papers.glorot2010,
}


@dataclass
class LabResult:
    """One experiment's runs, their numbers and its conclusion."""

    experiment: Experiment
    quick: bool
    results: list[Result]
    summaries: list[RunSummary]
    conclusion: Conclusion


@lru_cache(maxsize=8)
def input_variance(data_name: str = "digits", seed: int = 0) -> float:
    """Mean squared input feature of a data set's training part (the theory's input_var)."""
    return float(dataset(data_name, seed).x_train.double().square().mean())


def summaries(results: list[Result], theory: bool = False) -> list[RunSummary]:
    """The lab's numbers for each result (with the theory's prediction when asked: extra['predicted'])."""
    from ..theory import predict

    out = []
    for r in results:
        s = summarise(r.trace, r.history, r.diagnosis, r.job.label, dict(r.job.coords), r.run_id,
                      r.job.config.seed)
        s.extra.update(lr=r.job.config.lr, momentum=r.job.config.momentum, init=r.job.spec.init)
        if theory:  # nan where the theory does not cover the network (yet): the column stays empty
            p = predict(r.job.spec, input_var=input_variance(r.job.data, r.job.config.seed))
            s.extra["predicted"] = p.log10_ratio / 2 if p.applicable else math.nan  # ||.||^2 -> ||.||
        out.append(s)
    return out


def run_experiment(name: str, store: RunStore | str | Path, quick: bool = False, workers: int | None = 1,
                   resume: bool = False, seeds: Sequence[int] = SEEDS, progress_bar: bool = True,
                   backend: str = "local", address: str | None = None) -> LabResult:
    """Run (or, with resume, read back) one experiment's grid on every seed and conclude from the measurements.

    backend="ray" runs each run as a Ray task (on the cluster at `address`; see lab.runner.run_jobs).
    """
    exp = experiments.get(name)
    results = run_jobs(exp.jobs(quick, seeds), store, workers, resume, progress_bar, f"lab {name}", backend, address)
    sums = summaries(results, theory=exp.theory)
    return LabResult(exp, quick, results, sums, CONCLUDERS[name](sums))
