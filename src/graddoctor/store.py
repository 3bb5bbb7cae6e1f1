"""RunStore: runs, per-step scalars, per-layer statistics, findings and treatments in one sqlite file.

A run is written while it trains (WAL journal, one transaction per `commit_every` recorded
steps), so a process killed with SIGKILL leaves a readable partial run, which readers list as
'interrupted' once its writer is gone. Standard library + numpy only; NaN is stored as NULL.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .diagnose.findings import Diagnosis, Finding
from .errors import GradDoctorError
from .probe.trace import LAYER_METRICS, STEP_METRICS, LayerInfo, Trace
from .training import History

DEFAULT_PATH = Path("graddoctor-runs") / "runs.db"
SCHEMA_VERSION = 1  # PRAGMA user_version; bump on any change older readers would misread
STATUSES = ("running", "done", "failed", "interrupted")  # 'interrupted' is also derived on read
# A writer on another host cannot be checked by pid: call its run interrupted after this long
# without a commit (a recorded step commits at least every few seconds in practice).
REMOTE_STALE_SECONDS = 3600.0

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT, created TEXT NOT NULL, kind TEXT NOT NULL,
  parent INTEGER REFERENCES runs(id), spec TEXT NOT NULL, config TEXT NOT NULL, status TEXT NOT NULL,
  writer TEXT, updated REAL, finished TEXT, verdict TEXT, final_acc REAL, history TEXT,
  diagnosis TEXT, meta TEXT);
CREATE TABLE IF NOT EXISTS layers (run_id INTEGER NOT NULL, idx INTEGER NOT NULL, name TEXT NOT NULL, type TEXT,
  info TEXT NOT NULL, PRIMARY KEY (run_id, idx));
CREATE TABLE IF NOT EXISTS steps (run_id INTEGER NOT NULL, step INTEGER NOT NULL,
    {", ".join(f"{m} REAL" for m in STEP_METRICS)},
  PRIMARY KEY (run_id, step));
CREATE TABLE IF NOT EXISTS layer_stats (run_id INTEGER NOT NULL, step INTEGER NOT NULL, layer INTEGER NOT NULL,
  {", ".join(f"{m} REAL" for m in LAYER_METRICS)}, PRIMARY KEY (run_id, step, layer)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS findings (run_id INTEGER NOT NULL, idx INTEGER NOT NULL, kind TEXT, severity TEXT,
  summary TEXT, layers TEXT, detail TEXT NOT NULL, PRIMARY KEY (run_id, idx));
CREATE TABLE IF NOT EXISTS treatments (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER NOT NULL,
    remedy TEXT NOT NULL,
  healthy INTEGER, loss REAL, accuracy REAL, seconds REAL, payload TEXT NOT NULL, created TEXT NOT NULL);
"""


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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _start_token(pid: int) -> str:
    """The process start time from /proc (tells a live pid from a reused one); '' if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if rest[0] in "ZX" else rest[19]  # state, then field 22 = starttime


def _writer_alive(writer: str | None, updated: float | None) -> bool:
    host, _, rest = (writer or "").partition(":")
    pid_s, _, token = rest.partition(":")
    if host != socket.gethostname() or not pid_s.isdigit():
        return updated is not None and time.time() - updated < REMOTE_STALE_SECONDS
    if os.path.isdir("/proc"):
        return bool(token) and _start_token(int(pid_s)) == token
    try:
        os.kill(int(pid_s), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _plain(o: object) -> object:
    """JSON fallback for numpy values in specs, evidence and payloads."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _json(o: object) -> str:
    return json.dumps(o, default=_plain)


def _verdict(d: Diagnosis) -> str:
    return "healthy" if d.healthy else ", ".join(sorted(d.kinds()))


def _nan(v: object) -> float:
    return float("nan") if v is None else float(v)


class RunStore:
    """One sqlite file of runs; a context manager. `create=False` refuses to make a new file."""

    def __init__(self, path: str | Path = DEFAULT_PATH, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise GradDoctorError(f"no run store at {self.path}; record a run there first, "
                                      "or pass the right --store PATH")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise GradDoctorError(f"{self.path} is not a graddoctor run store ({exc})") from None

    def _open(self) -> None:
        self._db.execute("BEGIN")  # version and tables from one snapshot (another process may be creating it)
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        self._db.execute("COMMIT")
        if version > SCHEMA_VERSION:
            self._db.close()
            raise GradDoctorError(
                f"{self.path} has run-store schema {version}, newer than this graddoctor reads "
                f"({SCHEMA_VERSION}); upgrade graddoctor, or use another --store")
        if version == 0 and tables - {"sqlite_sequence"}:
            self._db.close()
            raise GradDoctorError(f"{self.path} is an sqlite file but not a graddoctor run store; "
                                  "pass another --store")
        self._db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process
        if version == 0:  # a new file (IF NOT EXISTS: two processes may create it at once)
            self._db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
        self._cols = {t: self._add_columns(t, ms) for t, ms in
                      (("steps", STEP_METRICS), ("layer_stats", LAYER_METRICS))}

    def _add_columns(self, table: str, metrics: tuple[str, ...]) -> list[str]:
        """Metrics added to the Trace schema since the file was made become new (NULL) columns."""
        have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
        for m in metrics:
            if m not in have and m.isidentifier():
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {m} REAL")
        return [m for m in metrics if m.isidentifier()]

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
        writer = f"{socket.gethostname()}:{os.getpid()}:{_start_token(os.getpid())}"
        with self.transaction() as db:
            cur = db.execute("INSERT INTO runs (created, kind, parent, spec, config, status, writer, updated)"
                             " VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
                             (_now(), kind, parent, _json(spec), _json(config), writer, time.time()))
        return int(cur.lastrowid)

    def recorder(self, run_id: int, trace: Trace | None = None, commit_every: int = 1) -> Recorder:
        """A Recorder that writes `trace` (and per-step losses) into run `run_id` as it grows."""
        self.get_run(run_id)
        return Recorder(self, run_id, trace, commit_every)

    def _write_rows(self, run_id: int, trace: Trace, start: int, layers_known: int,
                   losses: dict[int, float]) -> None:
        """Write trace rows [start:] (and any new layers, per-step losses) in the open transaction."""
        db, lc, sc = self._db, self._cols["layer_stats"], self._cols["steps"]
        if len(trace.layers) > layers_known:
            db.executemany("INSERT OR REPLACE INTO layers VALUES (?, ?, ?, ?, ?)",
                           [(run_id, i, x.name, x.type, json.dumps(asdict(x)))
                            for i, x in enumerate(trace.layers) if i >= layers_known])
            db.execute("UPDATE runs SET meta=? WHERE id=?", (_json(trace.meta), run_id))
        if len(trace) > start:
            part = trace.select(slice(start, len(trace)))
            lv = np.stack([part[m] for m in lc], axis=-1)  # (k steps, layers, metrics)
            sv = np.stack([part[m] for m in sc], axis=-1)  # (k steps, step metrics)
            steps = part.steps.tolist()
            db.executemany(f"INSERT OR REPLACE INTO layer_stats VALUES ({', '.join('?' * (3 + len(lc)))})",
                           [(run_id, s, j, *row) for s, block in zip(steps, lv.tolist())
                            for j, row in enumerate(block)])
            db.executemany(f"INSERT OR REPLACE INTO steps (run_id, step, {', '.join(sc)}) "
                           f"VALUES ({', '.join('?' * (2 + len(sc)))})",
                           [(run_id, s, *row) for s, row in zip(steps, sv.tolist())])
        db.executemany("INSERT INTO steps (run_id, step, loss) VALUES (?, ?, ?) "
                       "ON CONFLICT (run_id, step) DO UPDATE SET loss=excluded.loss",
                       [(run_id, s, v) for s, v in losses.items()])
        db.execute("UPDATE runs SET updated=? WHERE id=?", (time.time(), run_id))

    def finish_run(self, run_id: int, status: str = "done", history: History | None = None,
                   diagnosis: Diagnosis | None = None) -> None:
        """Set the final status and store the history and the diagnosis (findings as rows)."""
        if status not in STATUSES or status == "running":
            raise GradDoctorError(f"unknown final status {status!r}; choose one of: done, failed, interrupted")
        self.get_run(run_id)
        with self.transaction() as db:
            db.execute("UPDATE runs SET status=?, finished=?, updated=? WHERE id=?",
                       (status, _now(), time.time(), run_id))
            if history is not None:
                db.execute("UPDATE runs SET history=?, final_acc=? WHERE id=?",
                           (_json(history.to_dict()), history.val_acc[-1] if history.val_acc else None, run_id))
            if diagnosis is not None:
                rest = {"layers": list(diagnosis.layers), "context": diagnosis.context}
                db.execute("UPDATE runs SET diagnosis=?, verdict=? WHERE id=?",
                           (_json(rest), _verdict(diagnosis), run_id))
                db.execute("DELETE FROM findings WHERE run_id=?", (run_id,))
                db.executemany("INSERT INTO findings VALUES (?, ?, ?, ?, ?, ?, ?)",
                               [(run_id, i, f.kind, f.severity, f.summary, json.dumps(list(f.layers)),
                                 _json(f.to_dict())) for i, f in enumerate(diagnosis.findings)])

    def save_run(self, spec: dict, config: dict, trace: Trace, history: History | None = None,
                 diagnosis: Diagnosis | None = None, kind: str = "train", parent: int | None = None) -> int:
        """Store a finished run in one go (start, write the whole trace, finish); returns its id."""
        run_id = self.start_run(spec, config, kind, parent)
        with self.recorder(run_id, trace, commit_every=10**9) as rec:
            rec.flush()
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
                              _json(payload), _now()))
        return int(cur.lastrowid)

    # -- reading ----------------------------------------------------------------------
    def _select(self, where: str, args: tuple) -> list[RunInfo]:
        sql = ("SELECT r.id, r.created, r.kind, r.parent, r.spec, r.config, r.status, r.writer, r.updated, "
               "r.verdict, r.final_acc, (SELECT COUNT(DISTINCT step) FROM layer_stats s WHERE s.run_id=r.id) "
               f"FROM runs r {where} ORDER BY r.id")
        out = []
        for (i, created, k, parent, spec, config, status, writer, updated, verdict, acc, n) in \
                self._db.execute(sql, args):
            if status == "running" and not _writer_alive(writer, updated):
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
        """The run's Trace, rebuilt from the rows written so far (partial runs included)."""
        self.get_run(run_id)
        known = {f.name for f in fields(LayerInfo)}
        infos = [LayerInfo(**{k: v for k, v in json.loads(info).items() if k in known})
                 for (info,) in self._db.execute("SELECT info FROM layers WHERE run_id=? ORDER BY idx", (run_id,))]
        (meta,) = self._db.execute("SELECT meta FROM runs WHERE id=?", (run_id,)).fetchone()
        trace = Trace(infos, json.loads(meta) if meta else {})
        lc, sc = self._cols["layer_stats"], self._cols["steps"]
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
                sv[where[step], [STEP_METRICS.index(m) for m in sc]] = [_nan(v) for v in vals]
        for i, s in enumerate(steps):
            trace.append(int(s), lv[i], sv[i])
        return trace

    def steps(self, run_id: int) -> list[tuple]:
        """Per-step scalars (step, *STEP_METRICS) of every step written, recorded or loss-only."""
        sc = self._cols["steps"]
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
        return History(step_loss=[_nan(v) for (v,) in losses])

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


class Recorder:
    """Writes a run while it trains: pass it as `train(on_step=...)` and give it the probe's Trace.

    Every `commit_every` calls it writes the new trace rows and losses in one transaction: a
    SIGKILL loses at most the steps since the last commit. As a context manager it flushes on
    exit, and marks the run 'failed' ('interrupted' on Ctrl-C) if the block raised.
    """

    def __init__(self, store: RunStore, run_id: int, trace: Trace | None = None, commit_every: int = 1) -> None:
        if int(commit_every) < 1:
            raise GradDoctorError(f"commit_every must be at least 1, got {commit_every}")
        self.store, self.run_id, self.trace, self.commit_every = store, run_id, trace, int(commit_every)
        self._rows = self._layers = self._calls = 0  # trace rows / layers already written; calls
        self._losses: dict[int, float] = {}  # per-step losses not yet written

    def attach(self, trace: Trace) -> None:
        """Record this Trace from now on (e.g. the probe's, once it exists)."""
        self.trace, self._rows, self._layers = trace, 0, 0

    def __call__(self, step: int, loss: float) -> None:
        """The `on_step(step, loss)` callback of `graddoctor.train`."""
        self._losses[int(step)] = float(loss)
        self._calls += 1
        if self._calls % self.commit_every == 0:
            self.flush()

    def flush(self) -> None:
        """Write everything new in one transaction."""
        trace = self.trace if self.trace is not None else Trace()
        with self.store.transaction():
            self.store._write_rows(self.run_id, trace, self._rows, self._layers, self._losses)
        self._rows, self._layers, self._losses = len(trace), len(trace.layers), {}

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        self.flush()
        if exc_type is not None:
            status = "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed"
            self.store.finish_run(self.run_id, status)

