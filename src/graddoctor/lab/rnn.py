"""Lab experiment `rnn`: vanishing gradients through time, a tanh RNN against an LSTM.

The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015): a sequence of T pairs
(value ~ U(0, 1), marker), two of them marked (one in each half); the target is the sum of
the two marked values, read out after the last step. Predicting the mean (1.0) scores the
baseline MSE 1/6; beating it requires carrying information across up to T steps, so the
gradient from the loss at step T must reach the early steps (Bengio, Simard & Frasconi 1994).
For each cell and T the probe records ||dL/dx_t|| per time step (probe/recurrent.py): the
decades between the first and the last steps at init and after training
(diagnose/through_time.py), and whether the net learns (test MSE well below the baseline).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..diagnose import thresholds as T
from ..diagnose.api import diagnose
from ..diagnose.findings import Diagnosis
from ..errors import GradDoctorError
from ..probe.trace import Trace
from ..store import RunStore
from .adding import BASELINE_MSE, CELLS, FULL, QUICK, RECORDS, RnnSize, decades_through_time, run_one
from .claims import Conclusion, conclude
from .experiments import SEEDS
from .points import SPREAD_NOTE, counts, page, points, span
from .runner import Result, run_jobs
from .summary import verdict

# "Learns": test MSE below this fraction of the baseline (Le et al. 2015 call a run solved
# when it falls clearly below the baseline; 0.1 leaves no doubt: a net that learns nothing sits at ~1x).
LEARNED_FRACTION = 0.1
CLAIM = "A tanh RNN's gradient vanishes through time and it cannot learn long dependencies; an LSTM carries it."
SOURCE = "Bengio, Simard & Frasconi 1994; Hochreiter & Schmidhuber 1997; Le et al. 2015 (the adding problem)"


@dataclass
class RnnRun:
    """One (cell, T, seed) run: the gradient through time and whether it learnt."""

    cell: str
    length: int
    decades_init: float  # log10 ||dL/dx_first|| / ||dL/dx_last|| at the first recorded step
    decades_trained: float  # the same at the end of training: median over the last END_RECORDS records
    test_mse: float
    verdict_init: str
    verdict_trained: str
    run_id: int
    seconds: float
    trace: Trace = field(repr=False)
    seed: int = 0
    reused: bool = False  # read back from the store (resume), not trained now

    @property
    def learned(self) -> bool:
        """Test MSE below LEARNED_FRACTION of the baseline."""
        return self.test_mse < LEARNED_FRACTION * BASELINE_MSE

    @property
    def label(self) -> str:
        """'lstm, T=50'."""
        return f"{self.cell}, T={self.length}"

    @property
    def coords(self) -> dict[str, str]:
        """The grid point: cell and T."""
        return {"cell": self.cell, "T": str(self.length)}


def _verdict(trace: Trace) -> str:
    try:
        return verdict(diagnose(trace))
    except GradDoctorError:
        return "n/a"


@dataclass(frozen=True)
class RnnJob:
    """One (cell, T, seed) of the experiment, as the lab's runner runs and stores it (lab.runner.Runnable)."""

    cell: str
    length: int
    size: RnnSize
    seed: int

    @property
    def label(self) -> str:
        """'lstm, T=50'."""
        return f"{self.cell}, T={self.length}"

    def spec_dict(self) -> dict:
        """The stored run's spec column."""
        return {"cell": self.cell, "length": self.length, "hidden": self.size.hidden, "task": "adding"}

    def _config(self) -> dict:
        return {"steps": self.size.steps, "batch": self.size.batch, "lr": self.size.lr,
                "n_train": self.size.n_train, "seed": self.seed, "records": RECORDS, "group": "rnn"}

    def key(self) -> str:
        """A digest of everything that determines the result (what --resume matches on)."""
        what = {"spec": self.spec_dict(), "config": self._config()}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    def stored_config(self) -> dict:
        """The stored run's config column."""
        return {**self._config(), "label": self.label, "key": self.key(), "size": asdict(self.size)}

    def run(self) -> tuple[Trace, None, Diagnosis | None]:
        """Train and measure; the numbers go into the Trace's meta (stored with it)."""
        trace, mse, diagnosis, seconds = run_one(self.cell, self.length, self.size, self.seed)
        d0, d1 = decades_through_time(trace)
        trace.meta.update(label=self.label, group="rnn", seed=self.seed, test_mse=mse, decades_init=d0,
                          decades_trained=d1, seconds=seconds)  # the series stay in the Trace
        return trace, None, diagnosis


def _from_result(r: Result) -> RnnRun:
    m, job = r.trace.meta, r.job
    return RnnRun(job.cell, job.length, m["decades_init"], m["decades_trained"], m["test_mse"],
                  _verdict(r.trace.select([0])), verdict(r.diagnosis), r.run_id, m.get("seconds", math.nan),
                  r.trace, job.seed, r.reused)


def jobs(quick: bool = False, seeds: Sequence[int] = SEEDS, cells: Sequence[str] = CELLS) -> list[RnnJob]:
    """Every (cell, T) of the chosen size, once per seed."""
    size = QUICK if quick else FULL
    return [RnnJob(cell, length, size, seed) for seed in seeds for cell in cells for length in size.lengths]


def run(store: RunStore | str | Path, quick: bool = False, seeds: Sequence[int] = SEEDS,
        cells: Sequence[str] = CELLS, workers: int | None = 1, resume: bool = False,
        progress_bar: bool = True, backend: str = "local", address: str | None = None,
        ) -> tuple[list[RnnRun], Conclusion]:
    """Every (cell, T, seed), each stored as a run as it finishes; the runs and the conclusion."""
    results = run_jobs(jobs(quick, seeds, cells), store, workers, resume, progress_bar, "lab rnn", backend, address)
    runs = [_from_result(r) for r in results]
    return runs, conclude_rnn(runs)


def conclude_rnn(runs: list[RnnRun]) -> Conclusion:
    """Claim: the tanh RNN's gradient vanishes through time, more with T, and it does not learn the
    longest T; the LSTM carries the gradient there (within the diagnosis's threshold) and learns."""
    limit = T.TIME_VANISH_DECADES
    longest = max(r.length for r in runs)
    cell = lambda rs, c: sorted((r for r in rs if r.cell == c), key=lambda r: r.length)
    checks = [
        ("the tanh RNN's ratio at init falls with every increase of T",
         lambda rs: len(cell(rs, "rnn")) >= 2 and all(b.decades_init < a.decades_init
                                                      for a, b in itertools.pairwise(cell(rs, "rnn")))),
        (f"at T={longest} the tanh RNN's ratio after training stays below -{limit:g} decades and it does not "
         f"learn", lambda rs: cell(rs, "rnn")[-1].decades_trained < -limit and not cell(rs, "rnn")[-1].learned),
        (f"at T={longest} the LSTM's ratio after training is within {limit:g} decades and it learns",
         lambda rs: abs(cell(rs, "lstm")[-1].decades_trained) <= limit and cell(rs, "lstm")[-1].learned),
    ]
    says = ["Decades between the gradient reaching the first and the last time steps (log10 of "
            "||dL/dx_1|| / ||dL/dx_T||), over the seeds: "
            + "; ".join(f"{p.label}: {span(p.get('decades_init'))} at init, {span(p.get('decades_trained'))} "
                        f"trained, test MSE {span(p.get('test_mse'), _mse)} (learnt on "
                        f"{sum(r.learned for r in p.runs)}/{len(p.runs)})" for p in points(runs)) + "."]
    lstm = [p for p in points(runs) if p.runs[0].cell == "lstm" and p.runs[0].length == longest]
    if lstm and all(r.decades_init < -limit for r in lstm[0].runs):
        says.append(f"The LSTM at T={longest} starts beyond {limit:g} decades too "
                    f"({span(lstm[0].get('decades_init'))} at init); after training it is at "
                    f"{span(lstm[0].get('decades_trained'))}.")
    says.append(f"Baseline MSE {BASELINE_MSE:.3f}; 'learnt' means below {LEARNED_FRACTION * BASELINE_MSE:.4f}.")
    return conclude(runs, checks, says)


def _mse(v: float) -> str:
    return f"{v:.4f}"


def table(runs: list[RnnRun]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the experiment's table, one row per (cell, T), numbers as ranges over the seeds."""
    head = ["cell", "T", "decades at init", "decades trained", "test MSE", "learnt", "verdict (trained)"]
    return head, [[p.runs[0].cell, str(p.runs[0].length), span(p.get("decades_init")),
                   span(p.get("decades_trained")), span(p.get("test_mse"), _mse),
                   f"{sum(r.learned for r in p.runs)}/{len(p.runs)}", counts([r.verdict_trained for r in p.runs])]
                  for p in points(runs)]


def markdown(runs: list[RnnRun], conclusion: Conclusion, quick: bool = False) -> str:
    """The experiment as Markdown: claim, table, conclusion."""
    size = QUICK if quick else FULL
    seeds = sorted({r.seed for r in runs})
    head, rows = table(runs)
    intro = (f"*{SOURCE}.* `graddoctor lab run rnn{' --quick' if quick else ''}`: {len(rows)} grid points × "
             f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), hidden {size.hidden}, {size.steps} steps each, the "
             f"adding problem. {SPREAD_NOTE}")
    return page("rnn", CLAIM, intro, head, rows, conclusion.text)
