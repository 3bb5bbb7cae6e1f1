"""The run store's tables, its version (PRAGMA user_version) and the migrations between versions.

`prepare(db, path)` is the one entry point: it refuses a file that is not a run store or is
newer than this code, creates the tables in a new file, upgrades an older one step by step
(each step in one transaction, the version re-read under the write lock, so two processes
opening an old file at once upgrade it once), and adds a column for every Trace metric added
since the file was made (old rows read NULL = nan).
"""
from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from ..errors import GradDoctorError
from ..probe.trace import LAYER_METRICS, STEP_METRICS

SCHEMA_VERSION = 2  # bump on any change an older reader would misread, and add a MIGRATIONS entry

# Per-layer arrays beside the fixed metrics (Trace.series: per time step, per block, ...): one
# row per series, layer and step; `data` holds the float64 values little-endian, n of them.
_SERIES = """CREATE TABLE IF NOT EXISTS series (run_id INTEGER NOT NULL, name TEXT NOT NULL,
  layer TEXT NOT NULL, step INTEGER NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL,
  PRIMARY KEY (run_id, name, layer, step))"""

# The latest schema, as a new file gets it (IF NOT EXISTS: two processes may create it at once).
TABLES: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT, created TEXT NOT NULL,
  kind TEXT NOT NULL, parent INTEGER REFERENCES runs(id), spec TEXT NOT NULL, config TEXT NOT NULL,
  status TEXT NOT NULL, writer TEXT, updated REAL, finished TEXT, verdict TEXT, final_acc REAL, history TEXT,
  diagnosis TEXT, meta TEXT)""",
    """CREATE TABLE IF NOT EXISTS layers (run_id INTEGER NOT NULL, idx INTEGER NOT NULL, name TEXT NOT NULL,
  type TEXT, info TEXT NOT NULL, PRIMARY KEY (run_id, idx))""",
    f"""CREATE TABLE IF NOT EXISTS steps (run_id INTEGER NOT NULL, step INTEGER NOT NULL,
  {", ".join(f"{m} REAL" for m in STEP_METRICS)}, PRIMARY KEY (run_id, step))""",
    f"""CREATE TABLE IF NOT EXISTS layer_stats (run_id INTEGER NOT NULL, step INTEGER NOT NULL,
  layer INTEGER NOT NULL, {", ".join(f"{m} REAL" for m in LAYER_METRICS)},
  PRIMARY KEY (run_id, step, layer)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS findings (run_id INTEGER NOT NULL, idx INTEGER NOT NULL, kind TEXT,
  severity TEXT, summary TEXT, layers TEXT, detail TEXT NOT NULL, PRIMARY KEY (run_id, idx))""",
    """CREATE TABLE IF NOT EXISTS treatments (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER NOT NULL,
  remedy TEXT NOT NULL, healthy INTEGER, loss REAL, accuracy REAL, seconds REAL, payload TEXT NOT NULL,
  created TEXT NOT NULL)""",
    _SERIES,
)

# version k -> the statements that turn a version-k file into version k+1.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (_SERIES,),  # 1 -> 2: Trace.series (an RNN's per-time-step error signal, ...) is stored
}


def _version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _in_write_transaction(db: sqlite3.Connection, statements_for: Callable[[int], list]) -> None:
    """BEGIN IMMEDIATE, re-read the version, run statements_for(version) and set the new version."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for version, statements in statements_for(_version(db)):
            for sql in statements:
                db.execute(sql)
            db.execute(f"PRAGMA user_version={version}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _create(version: int) -> list[tuple[int, tuple[str, ...]]]:
    return [(SCHEMA_VERSION, TABLES)] if version == 0 else []  # another process created it meanwhile


def _upgrade(version: int) -> list[tuple[int, tuple[str, ...]]]:
    return [(k + 1, MIGRATIONS[k]) for k in range(version, SCHEMA_VERSION)]


def add_columns(db: sqlite3.Connection, table: str, metrics: tuple[str, ...]) -> list[str]:
    """Metrics added to the Trace since the file was made become new (NULL) columns; returns the columns."""
    have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
    for m in metrics:
        if m not in have and m.isidentifier():
            db.execute(f"ALTER TABLE {table} ADD COLUMN {m} REAL")
    return [m for m in metrics if m.isidentifier()]


def prepare(db: sqlite3.Connection, path: Path) -> dict[str, list[str]]:
    """Check, create or upgrade the file's schema; returns table -> metric columns (steps, layer_stats)."""
    db.execute("BEGIN")  # version and tables from one snapshot (another process may be creating it)
    version = _version(db)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.execute("COMMIT")
    if version > SCHEMA_VERSION:
        raise GradDoctorError(
            f"{path} has run-store schema {version}, newer than this graddoctor reads "
            f"({SCHEMA_VERSION}); upgrade graddoctor, or use another --store")
    if version == 0 and tables - {"sqlite_sequence"}:
        raise GradDoctorError(f"{path} is an sqlite file but not a graddoctor run store; pass another --store")
    db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process
    try:
        if version < SCHEMA_VERSION:  # an up-to-date file is only read: no write lock taken
            _in_write_transaction(db, _create if version == 0 else _upgrade)
    except sqlite3.OperationalError as exc:
        raise GradDoctorError(
            f"{path} has run-store schema {version} and could not be brought to {SCHEMA_VERSION} ({exc}); "
            "make the file writable (or copy it somewhere writable) and open it again") from None
    return {t: add_columns(db, t, ms) for t, ms in (("steps", STEP_METRICS), ("layer_stats", LAYER_METRICS))}
