"""The run store: every measurement of a run in one sqlite file, written as it trains.

- schema.py: the tables, the schema version and the migrations from older versions;
- runstore.py: `RunStore`, writing and reading runs (Trace with its series, History, Diagnosis);
- recorder.py: `Recorder`, the `train(on_step=...)` callback that commits rows as they come;
- rows.py: cell encodings (JSON, NULL = nan, float64 blobs) and the writer's process identity.
"""
from .recorder import Recorder
from .rows import REMOTE_STALE_SECONDS
from .runstore import DEFAULT_PATH, STATUSES, RunInfo, RunStore
from .schema import SCHEMA_VERSION

__all__ = ["DEFAULT_PATH", "REMOTE_STALE_SECONDS", "SCHEMA_VERSION", "STATUSES", "Recorder", "RunInfo",
           "RunStore"]
