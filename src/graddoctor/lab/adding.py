"""The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015), a sequence regressor for it,
and one measured training run (no I/O): what lab/rnn.py runs per (cell, T, seed).

A sequence of T pairs (value ~ U(0, 1), marker), two of them marked (one in each half); the
target is the sum of the two marked values, read out after the last step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..data import from_tensors
from ..diagnose.api import diagnose
from ..diagnose.findings import Diagnosis
from ..diagnose.signals import time_profiles
from ..diagnose.through_time import decades
from ..errors import GradDoctorError, unknown
from ..probe.trace import Trace
from ..training import TrainConfig, train

CELLS = ("rnn", "lstm")  # nn.RNN (tanh) and nn.LSTM
BASELINE_MSE = 1 / 6  # Var(u1 + u2), u ~ U(0, 1): the MSE of always predicting the mean, 1.0


def adding_problem(n: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(x (n, T, 2): value, marker; y (n, 1): the sum of the two marked values)."""
    if length < 2:
        raise GradDoctorError(f"the adding problem needs T >= 2 time steps, got {length}")
    values = torch.rand(n, length, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, length, (n,), generator=generator)
    marks = torch.zeros(n, length)
    rows = torch.arange(n)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    return torch.stack([values, marks], dim=-1), (values * marks).sum(1, keepdim=True)


class SeqRegressor(nn.Module):
    """A recurrent layer over the sequence, a linear read-out of its last output."""

    def __init__(self, cell: str, hidden: int) -> None:
        super().__init__()
        if cell not in CELLS:
            raise unknown("recurrent cell", cell, CELLS)
        kind = nn.RNN if cell == "rnn" else nn.LSTM
        self.rnn = kind(2, hidden, batch_first=True)  # nn.RNN: tanh
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)  # (B, T, H)
        return self.head(out[:, -1])


RECORDS = 20  # probed steps per run
# "After training" = the last 3 records: an LSTM on the adding problem learns suddenly (its
# loss and its gradient through time both jump within ~40 steps, e.g. seed 3 at step ~720 of
# 800: -4.4 -> -0.2 decades), so a longer window would mix the states before and after.
END_RECORDS = 3


@dataclass(frozen=True)
class RnnSize:
    """How big the experiment runs."""

    lengths: tuple[int, ...]  # sequence lengths T
    steps: int  # optimizer steps per run
    hidden: int  # units per recurrent layer
    batch: int
    n_train: int  # training sequences (a fixed set, several epochs)
    lr: float = 0.01  # Adam


# Measured (seeds 0-1, 1 thread): FULL takes 60-100 s; an LSTM learns T=100 within 3000 steps
# (test MSE 1e-4) and a tanh RNN learns none of T >= 50. QUICK (~6 s) keeps the same outcome
# at T=30 (seeds 0-3).
FULL = RnnSize((10, 50, 100), 3000, 32, 64, 8000)
QUICK = RnnSize((10, 30), 800, 32, 64, 3000)


def decades_through_time(trace: Trace) -> tuple[float, float]:
    """log10 of the first over the last time steps' gradient: (at the first record, median of the last few)."""
    profiles = time_profiles(trace)
    if not profiles:
        return math.nan, math.nan
    _, values, _ = next(iter(profiles.values()))
    d = np.array([decades(row)[0] for row in values])
    end = d[-END_RECORDS:]
    end = end[np.isfinite(end)]
    return float(d[0]), float(np.median(end)) if len(end) else math.nan


def run_one(cell: str, length: int, size: RnnSize, seed: int = 0) -> tuple[Trace, float, Diagnosis | None, float]:
    """Train one (cell, T) under the probe: (trace, test MSE, diagnosis, seconds); no I/O."""
    from ..probe.probe import watch

    g = torch.Generator().manual_seed(seed)
    x, y = adding_problem(size.n_train, length, g)
    x_test, y_test = adding_problem(1000, length, g)
    torch.manual_seed(seed)
    model = SeqRegressor(cell, size.hidden)
    config = TrainConfig(optimizer="adam", lr=size.lr, loss="mse", batch_size=size.batch,
                         max_steps=size.steps, seed=seed)
    t0 = time.perf_counter()
    with watch(model, every=max(1, size.steps // RECORDS)) as probe:
        train(model, from_tensors(x, y, val_fraction=0.1, seed=seed), config, probe=probe, progress_bar=False)
    with torch.no_grad():
        mse = float(nn.functional.mse_loss(model(x_test), y_test))
    trace = probe.trace
    try:
        diagnosis = diagnose(trace)
    except GradDoctorError:
        diagnosis = None
    return trace, mse, diagnosis, time.perf_counter() - t0
