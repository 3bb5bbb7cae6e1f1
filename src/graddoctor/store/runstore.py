"""RunStore: one sqlite file of runs, per-step scalars, per-layer statistics, series, findings and
treatments; writing (start, finish, save, treatments) and reading (listings, Trace, History,
Diagnosis). The schema lives in schema.py, the row writer and the Recorder in recorder.py.

A run is written while it trains (WAL journal, one transaction per `commit_every` recorded
steps), so a process killed with SIGKILL leaves a readable partial run, which readers list as
'interrupted' once its writer is gone. Standard library + numpy only; NaN is stored as NULL.
"""
from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..diagnose.findings import Diagnosis, Finding
from ..errors import GradDoctorError
from ..probe.trace import LAYER_METRICS, STEP_METRICS, LayerInfo, Trace
from ..training import History
from . import schema
from .recorder import Recorder
from .rows import from_blob, nan_if_null, now, to_json, writer_alive, writer_id

DEFAULT_PATH = Path("graddoctor-runs") / "runs.db"
STATUSES = ("running", "done", "failed", "interrupted")  # 'interrupted' is also derived on read


@dataclass(frozen=True)
class RunInfo:
    """One row of `runs()`: what a listing shows."""

    id: int
    created: str  # ISO 8601, UTC
    kind: str  # 'train', 'candidate', ...
    parent: int | None  # e.g. the run a treat candidate was derived from
    spec: dict
    config: dict
    status: str  # running | done | failed | interrupted
    verdict: str | None  # 'healthy', 'vanishing', 'exploding, saturation', ... (None: not diagnosed)
    final_acc: float | None  # final validation accuracy
    n_steps: int  # recorded steps with per-layer statistics


def _verdict(d: Diagnosis) -> str:
    return "healthy" if d.healthy else ", ".join(sorted(d.kinds()))


class RunStore:
    """One sqlite file of runs; a context manager. `create=False` refuses to make a new file.

    Opening a file written by an older graddoctor upgrades it in place (schema.MIGRATIONS).
    """

    def __init__(self, path: str | Path = DEFAULT_PATH, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise GradDoctorError(f"no run store at {self.path}; record a run there first, "
                                      "or pass the right --store PATH")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            self.columns = schema.prepare(self._db, self.path)  # table -> metric columns it has
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise GradDoctorError(f"{self.path} is not a graddoctor run store ({exc})") from None
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN ... COMMIT (ROLLBACK on error); commits are what a SIGKILL cannot undo."""
        if self._db.in_transaction:
            yield self._db
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------
    def start_run(self, spec: dict, config: dict, kind: str = "train", parent: int | None = None) -> int:
        """Create a run in status 'running' owned by this process; returns its id."""
        with self.transaction() as db:
            cur = db.execute("INSERT INTO runs (created, kind, parent, spec, config, status, writer, updated)"
                             " VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
                             (now(), kind, parent, to_json(spec), to_json(config), writer_id(), time.time()))
        return int(cur.lastrowid)

    def recorder(self, run_id: int, trace: Trace | None = None, commit_every: int = 1) -> Recorder:
        """A Recorder that writes `trace` (and per-step losses) into run `run_id` as it grows."""
        self.get_run(run_id)
        return Recorder(self, run_id, trace, commit_every)

    def finish_run(self, run_id: int, status: str = "done", history: History | None = None,
                   diagnosis: Diagnosis | None = None) -> None:
        """Set the final status and store the history and the diagnosis (findings as rows)."""
        if status not in STATUSES or status == "running":
            raise GradDoctorError(f"unknown final status {status!r}; choose one of: done, failed, interrupted")
        self.get_run(run_id)
        with self.transaction() as db:
            db.execute("UPDATE runs SET status=?, finished=?, updated=? WHERE id=?",
                       (status, now(), time.time(), run_id))
            if history is not None:
                db.execute("UPDATE runs SET history=?, final_acc=? WHERE id=?",
                           (to_json(history.to_dict()), history.val_acc[-1] if history.val_acc else None, run_id))
            if diagnosis is not None:
                rest = {"layers": list(diagnosis.layers), "context": diagnosis.context}
                db.execute("UPDATE runs SET diagnosis=?, verdict=? WHERE id=?",
                           (to_json(rest), _verdict(diagnosis), run_id))
                db.execute("DELETE FROM findings WHERE run_id=?", (run_id,))
                db.executemany("INSERT INTO findings VALUES (?, ?, ?, ?, ?, ?, ?)",
                               [(run_id, i, f.kind, f.severity, f.summary, json.dumps(list(f.layers)),
                                 to_json(f.to_dict())) for i, f in enumerate(diagnosis.findings)])

    def save_run(self, spec: dict, config: dict, trace: Trace, history: History | None = None,
                 diagnosis: Diagnosis | None = None, kind: str = "train", parent: int | None = None) -> int:
        """Store a finished run in one go (start, write the whole trace, finish); returns its id."""
        run_id = self.start_run(spec, config, kind, parent)
        with self.recorder(run_id, trace, commit_every=10**9):
            pass  # the recorder's exit writes everything, series included
        self.finish_run(run_id, "done", history, diagnosis)
        return run_id

    def add_treatment(self, run_id: int, remedy: str, payload: dict, healthy: bool | None = None,
                      loss: float | None = None, accuracy: float | None = None,
                      seconds: float | None = None) -> int:
        """Store one treat candidate's result for run `run_id`; returns the row id."""
        self.get_run(run_id)
        with self.transaction() as db:
            cur = db.execute("INSERT INTO treatments (run_id, remedy, healthy, loss, accuracy, seconds, payload, "
                             "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (run_id, remedy, None if healthy is None else int(healthy), loss, accuracy, seconds,
                              to_json(payload), now()))
        return int(cur.lastrowid)

    # -- reading ----------------------------------------------------------------------
    def _select(self, where: str, args: tuple) -> list[RunInfo]:
        sql = ("SELECT r.id, r.created, r.kind, r.parent, r.spec, r.config, r.status, r.writer, r.updated, "
               "r.verdict, r.final_acc, (SELECT COUNT(DISTINCT step) FROM layer_stats s WHERE s.run_id=r.id) "
               f"FROM runs r {where} ORDER BY r.id")
        out = []
        for (i, created, k, parent, spec, config, status, writer, updated, verdict, acc, n) in \
                self._db.execute(sql, args):
            if status == "running" and not writer_alive(writer, updated):
                status = "interrupted"
            out.append(RunInfo(i, created, k, parent, json.loads(spec), json.loads(config), status,
                               verdict, acc, n))
        return out

    def runs(self, kind: str | None = None) -> list[RunInfo]:
        """All runs (optionally of one kind), oldest first; a dead writer's run reads 'interrupted'."""
        return self._select("WHERE r.kind=?", (kind,)) if kind else self._select("", ())

    def get_run(self, run_id: int) -> RunInfo:
        """One run's listing row; a clear error if there is no such run."""
        found = self._select("WHERE r.id=?", (run_id,))
        if not found:
            raise GradDoctorError(f"no run {run_id!r} in {self.path}; `graddoctor runs --store {self.path}` "
                                  "lists the runs")
        return found[0]

    def latest(self, kind: str | None = None) -> RunInfo:
        """The most recent run (optionally of one kind)."""
        found = self.runs(kind)
        if not found:
            raise GradDoctorError(f"no runs in {self.path} yet")
        return found[-1]

    def children(self, run_id: int) -> list[RunInfo]:
        """Runs whose parent is `run_id` (e.g. treat candidates that stored their traces)."""
        return [r for r in self.runs() if r.parent == run_id]

    def load_trace(self, run_id: int) -> Trace:
        """The run's Trace, rebuilt from the rows written so far (partial runs included), with its series."""
        self.get_run(run_id)
        known = {f.name for f in fields(LayerInfo)}
        infos = [LayerInfo(**{k: v for k, v in json.loads(info).items() if k in known})
                 for (info,) in self._db.execute("SELECT info FROM layers WHERE run_id=? ORDER BY idx", (run_id,))]
        (meta,) = self._db.execute("SELECT meta FROM runs WHERE id=?", (run_id,)).fetchone()
        trace = Trace(infos, json.loads(meta) if meta else {})
        for name, layer, step, data in self._db.execute(
                "SELECT name, layer, step, data FROM series WHERE run_id=? ORDER BY rowid", (run_id,)):
            trace.series.add(name, layer, step, from_blob(data))
        lc, sc = self.columns["layer_stats"], self.columns["steps"]
        rows = self._db.execute(f"SELECT step, layer, {', '.join(lc)} FROM layer_stats WHERE run_id=? "
                                "ORDER BY step, layer", (run_id,)).fetchall()
        if not rows:
            return trace
        a = np.array(rows, dtype=np.float64)  # NULL (None) -> nan
        steps, pos = np.unique(a[:, 0].astype(np.int64), return_inverse=True)
        lv = np.full((len(steps), len(infos), len(LAYER_METRICS)), np.nan)
        lv[pos[:, None], a[:, 1:2].astype(np.int64), [LAYER_METRICS.index(m) for m in lc]] = a[:, 2:]
        sv = np.full((len(steps), len(STEP_METRICS)), np.nan)
        where = {int(s): i for i, s in enumerate(steps)}
        for step, *vals in self._db.execute(f"SELECT step, {', '.join(sc)} FROM steps WHERE run_id=?", (run_id,)):
            if step in where:
                sv[where[step], [STEP_METRICS.index(m) for m in sc]] = [nan_if_null(v) for v in vals]
        for i, s in enumerate(steps):
            trace.append(int(s), lv[i], sv[i])
        return trace

    def steps(self, run_id: int) -> list[tuple]:
        """Per-step scalars (step, *STEP_METRICS) of every step written, recorded or loss-only."""
        sc = self.columns["steps"]
        return self._db.execute(f"SELECT step, {', '.join(sc)} FROM steps WHERE run_id=? ORDER BY step",
                                (run_id,)).fetchall()

    def load_history(self, run_id: int) -> History:
        """The run's History; for an unfinished run, the per-step losses recorded so far."""
        self.get_run(run_id)
        (h,) = self._db.execute("SELECT history FROM runs WHERE id=?", (run_id,)).fetchone()
        if h:  # fields a newer/older History lacks are dropped rather than fatal
            known = {f.name for f in fields(History)}
            return History(**{k: v for k, v in json.loads(h).items() if k in known})
        losses = self._db.execute("SELECT loss FROM steps WHERE run_id=? ORDER BY step", (run_id,)).fetchall()
        return History(step_loss=[nan_if_null(v) for (v,) in losses])

    def load_diagnosis(self, run_id: int) -> Diagnosis | None:
        """The stored Diagnosis, or None if the run was not diagnosed."""
        self.get_run(run_id)
        (d,) = self._db.execute("SELECT diagnosis FROM runs WHERE id=?", (run_id,)).fetchone()
        if d is None:
            return None
        rest = json.loads(d)
        found = [Finding.from_dict(json.loads(x)) for (x,) in
                 self._db.execute("SELECT detail FROM findings WHERE run_id=? ORDER BY idx", (run_id,))]
        return Diagnosis(found, rest.get("layers", []), rest.get("context", {}))

    def treatments(self, run_id: int) -> list[dict]:
        """Treatment rows of a run, in the order they were added."""
        cur = self._db.execute("SELECT id, remedy, healthy, loss, accuracy, seconds, payload, created "
                               "FROM treatments WHERE run_id=? ORDER BY id", (run_id,))
        return [{"id": i, "remedy": r, "healthy": None if h is None else bool(h), "loss": loss,
                 "accuracy": acc, "seconds": sec, "payload": json.loads(p), "created": c}
                for i, r, h, loss, acc, sec, p, c in cur]
