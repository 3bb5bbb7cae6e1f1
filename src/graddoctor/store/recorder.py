"""Writing a run while it trains: the Recorder (`train(on_step=...)`) and the rows it writes.

Each flush writes, in one transaction, the Trace rows recorded since the last one (per-layer
statistics, per-step scalars, new layers), the Trace.series entries of those steps, the
per-step losses and trace.meta if it changed; a SIGKILL loses at most the steps since the
last commit.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from ..errors import GradDoctorError
from ..probe.series import Series
from ..probe.trace import Trace
from .rows import to_blob, to_json

if TYPE_CHECKING:
    from .runstore import RunStore


def series_rows(series: Series) -> list[tuple[str, str, int, np.ndarray]]:
    """(name, layer, step, values) for every entry of `series`, in first-seen order."""
    header, arrays = series.to_npz()  # the one public view that keeps each entry's exact length
    out = []
    for e in header:
        for s, row, n in zip(arrays[e["key"] + "_steps"].tolist(), arrays[e["key"]], e["lengths"]):
            out.append((e["name"], e["layer"], int(s), row[:n]))
    return out


def write_series(db: sqlite3.Connection, run_id: int, rows: list[tuple[str, str, int, np.ndarray]]) -> None:
    """Insert or update series entries (an update keeps the row's place, so key order survives)."""
    db.executemany("INSERT INTO series (run_id, name, layer, step, n, data) VALUES (?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT (run_id, name, layer, step) DO UPDATE SET n=excluded.n, data=excluded.data",
                   [(run_id, name, layer, step, len(v), to_blob(v)) for name, layer, step, v in rows])


def write_rows(db: sqlite3.Connection, cols: dict[str, list[str]], run_id: int, trace: Trace, start: int,
               layers_known: int, losses: dict[int, float], meta_written: str | None = None) -> str:
    """Write trace rows [start:], their series entries, new layers, losses and changed metadata in the
    open transaction; returns the metadata as written (pass it back next time)."""
    lc, sc = cols["layer_stats"], cols["steps"]
    if len(trace.layers) > layers_known:
        db.executemany("INSERT OR REPLACE INTO layers VALUES (?, ?, ?, ?, ?)",
                       [(run_id, i, x.name, x.type, json.dumps(asdict(x)))
                        for i, x in enumerate(trace.layers) if i >= layers_known])
    meta = to_json(trace.meta)  # grows while training (blocks seen, AMP-skipped steps, first non-finite step)
    if meta != meta_written:
        db.execute("UPDATE runs SET meta=? WHERE id=?", (meta, run_id))
    if len(trace) > start:
        part = trace.select(slice(start, len(trace)))  # its .series: the entries at these steps
        lv = np.stack([part[m] for m in lc], axis=-1)  # (k steps, layers, metrics)
        sv = np.stack([part[m] for m in sc], axis=-1)  # (k steps, step metrics)
        steps = part.steps.tolist()
        db.executemany(f"INSERT OR REPLACE INTO layer_stats VALUES ({', '.join('?' * (3 + len(lc)))})",
                       [(run_id, s, j, *row) for s, block in zip(steps, lv.tolist()) for j, row in enumerate(block)])
        db.executemany(f"INSERT OR REPLACE INTO steps (run_id, step, {', '.join(sc)}) "
                       f"VALUES ({', '.join('?' * (2 + len(sc)))})",
                       [(run_id, s, *row) for s, row in zip(steps, sv.tolist())])
        write_series(db, run_id, series_rows(part.series))
    db.executemany("INSERT INTO steps (run_id, step, loss) VALUES (?, ?, ?) "
                   "ON CONFLICT (run_id, step) DO UPDATE SET loss=excluded.loss",
                   [(run_id, s, v) for s, v in losses.items()])
    db.execute("UPDATE runs SET updated=? WHERE id=?", (time.time(), run_id))
    return meta


class Recorder:
    """Writes a run while it trains: pass it as `train(on_step=...)` and give it the probe's Trace.

    Every `commit_every` calls it writes the new trace rows and losses in one transaction: a
    SIGKILL loses at most the steps since the last commit. As a context manager it flushes on
    exit (rewriting every series entry: one added or replaced at a step already written is
    caught there), and marks the run 'failed'
    ('interrupted' on Ctrl-C) if the block raised.
    """

    def __init__(self, store: RunStore, run_id: int, trace: Trace | None = None, commit_every: int = 1) -> None:
        if int(commit_every) < 1:
            raise GradDoctorError(f"commit_every must be at least 1, got {commit_every}")
        self.store, self.run_id, self.trace, self.commit_every = store, run_id, trace, int(commit_every)
        self._rows = self._layers = self._calls = 0  # trace rows / layers already written; calls
        self._losses: dict[int, float] = {}  # per-step losses not yet written
        self._meta: str | None = None  # trace.meta as last written (JSON)

    def attach(self, trace: Trace) -> None:
        """Record this Trace from now on (e.g. the probe's, once it exists)."""
        self.trace, self._rows, self._layers, self._meta = trace, 0, 0, None

    def __call__(self, step: int, loss: float) -> None:
        """The `on_step(step, loss)` callback of `graddoctor.train`."""
        self._losses[int(step)] = float(loss)
        self._calls += 1
        if self._calls % self.commit_every == 0:
            self.flush()

    def flush(self, all_series: bool = False) -> None:
        """Write everything new in one transaction (`all_series`: every series entry, not only new steps')."""
        trace = self.trace if self.trace is not None else Trace()
        with self.store.transaction() as db:
            self._meta = write_rows(db, self.store.columns, self.run_id, trace, self._rows, self._layers,
                                    self._losses, self._meta)
            if all_series and len(trace.series):  # O(all entries): once, when the run ends
                write_series(db, self.run_id, series_rows(trace.series))
        self._rows, self._layers, self._losses = len(trace), len(trace.layers), {}

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        self.flush(all_series=True)
        if exc_type is not None:
            status = "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed"
            self.store.finish_run(self.run_id, status)
