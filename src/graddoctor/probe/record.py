"""The record of one step: device values + rows saying what each is, then one host copy.

`Record` (device side) collects 1-D device tensors with `append` (-> the offset of their first
value) and rows with `file`/`file_many`: (slot, key, count, value index, length), slots as in
slots.py. `fetch()` copies every value to the host at once and returns a `RawStep` (host side),
which the parts (amp.py, distributed.py, ...) transform with `table`, `cut`, `scaled` and
`keep`, and pooling.py turns into Trace rows, many steps at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from .slots import ZERO, power

SLOT, KEY, COUNT, INDEX, LENGTH = range(5)  # the columns of a row
WIDTH = 5
_POWER = power()


def fetch(values: list[Tensor]) -> np.ndarray:
    """1-D device tensors -> one float64 numpy array, with one device->host copy per device."""
    if not values:
        return np.zeros(0)
    try:  # common case: one device; cat promotes mixed float dtypes
        return torch.cat(values).to(torch.float64).cpu().numpy()  # note: the host sync point
    except RuntimeError:  # tensors on several devices
        sizes = np.cumsum([0] + [len(v) for v in values])
        out = np.empty(sizes[-1])
        by_device: dict[torch.device, list[int]] = {}
        for i, v in enumerate(values):
            by_device.setdefault(v.device, []).append(i)
        for idx in by_device.values():
            host = torch.cat([values[i] for i in idx]).to(torch.float64).cpu().numpy()
            out[np.concatenate([np.arange(sizes[i], sizes[i + 1]) for i in idx])] = host
        return out


def rows_array(rows: list[int], chunks: list[np.ndarray]) -> np.ndarray:
    """Flat rows and (k, WIDTH) blocks -> one (n, WIDTH) int64 table."""
    return np.concatenate([np.array(rows, dtype=np.int64).reshape(-1, WIDTH)] + list(chunks))


@dataclass
class RawStep:
    """One recorded step on the host: the fetched values and the rows that say what they are."""

    values: np.ndarray  # float64
    rows: list[int] = field(default_factory=list)  # flat rows, as filed
    chunks: list[np.ndarray] = field(default_factory=list)  # more rows, (k, WIDTH) blocks
    loss: float | Tensor | None = None  # a 0-d tensor when handed over after the step (read when pooled)
    host: dict[str, float] = field(default_factory=dict)  # host-known step values (lr)
    recorded: bool = True  # False: only its every-step checks count (e.g. a step the scaler skipped)

    def table(self) -> np.ndarray:
        """All rows as one (n, WIDTH) int64 array (built once, then kept)."""
        if self.rows or len(self.chunks) != 1:
            self.chunks, self.rows = [rows_array(self.rows, self.chunks)], []
        return self.chunks[0]

    def with_table(self, table: np.ndarray, values: np.ndarray | None = None) -> RawStep:
        """A copy with these rows (and values)."""
        return replace(self, rows=[], chunks=[table], values=self.values if values is None else values)

    def keep(self, rows: np.ndarray) -> RawStep:
        """A copy with only the rows where `rows` (bool, one per row) is True."""
        return self.with_table(self.table()[rows])

    def cut(self, start: int, stop: int) -> RawStep:
        """A copy without values[start:stop] (numbers no row refers to); later indices shift down."""
        if stop <= start:
            return self
        t = self.table().copy()
        t[:, INDEX] = np.where(t[:, INDEX] >= stop, t[:, INDEX] - (stop - start), t[:, INDEX])
        return self.with_table(t, np.concatenate([self.values[:start], self.values[stop:]]))

    def scaled(self, slots: np.ndarray, factor: float) -> RawStep:
        """A copy with the values of these slots' rows multiplied by factor (factor^2 for sums of squares)."""
        if factor == 1.0:
            return self
        t = self.table()
        sel = t[slots[t[:, SLOT]] & (t[:, INDEX] != ZERO)]
        values = self.values.copy()
        for p in (1, 2):
            part = sel[_POWER[sel[:, SLOT]] == p]
            if len(part):
                idx = np.unique(np.concatenate([np.arange(i, i + n) for i, n in part[:, [INDEX, LENGTH]]]))
                values[idx] *= factor ** p
        return replace(self, values=values)


class Record:
    """What one step filed on the device, until `fetch()` copies it to the host at once."""

    def __init__(self) -> None:
        self.values: list[Tensor] = []  # 1-D device tensors
        self.size = 0  # their total length
        self.rows: list[int] = []  # flat (slot, key, count, index, length) rows
        self.chunks: list[np.ndarray] = []  # more rows as (k, WIDTH) blocks
        self.loss: Tensor | float | None = None
        self.host: dict[str, float] = {}

    def append(self, tensors: list[Tensor] | Tensor) -> int:
        """Add values (a list of 0-d tensors, stacked now while in cache, or one tensor); their offset."""
        start = self.size
        t = tensors.reshape(-1) if isinstance(tensors, Tensor) else torch.stack(tensors)
        self.values.append(t)
        self.size += len(t)
        return start

    def file(self, slot: int, key: int, count: int, index: int, length: int = 1) -> None:
        """Say what values[index:index + length] measures (index ZERO: the number 0)."""
        self.rows += (slot, key, count, index, length)

    def file_many(self, slot: np.ndarray | int, keys: np.ndarray | int, counts: np.ndarray | int,
                  tensors: list[Tensor] | Tensor) -> int:
        """Append k values and file one row for each; returns their offset."""
        start = self.append(tensors)
        k = self.size - start
        rows = np.empty((k, WIDTH), np.int64)  # column by column: ~4x cheaper than np.column_stack
        rows[:, SLOT], rows[:, KEY], rows[:, COUNT] = slot, keys, counts
        rows[:, INDEX], rows[:, LENGTH] = np.arange(start, start + k), 1
        self.chunks.append(rows)
        return start

    def fetch(self) -> RawStep:
        """Copy the values to the host (the one sync of the step) and hand the step over."""
        values = fetch(self.values)
        self.values = []
        return RawStep(values, self.rows, self.chunks, self.loss, dict(self.host))
