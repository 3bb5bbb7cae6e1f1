"""The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015) and a sequence regressor for it.

A sequence of T pairs (value ~ U(0, 1), marker), two of them marked (one in each half); the
target is the sum of the two marked values, read out after the last step.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import GradDoctorError, unknown

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
