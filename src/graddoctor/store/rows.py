"""Values to and from sqlite cells: JSON with numpy values, NULL for nan, float64 arrays as blobs,
and the writer identity that tells a live run from one whose process died."""
from __future__ import annotations

import json
import os
import socket
import time
from datetime import UTC, datetime

import numpy as np

# A writer on another host cannot be checked by pid: call its run interrupted after this long
# without a commit (a recorded step commits at least every few seconds in practice).
REMOTE_STALE_SECONDS = 3600.0


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _plain(o: object) -> object:
    """JSON fallback for numpy values in specs, evidence and payloads."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def to_json(o: object) -> str:
    """JSON text of specs, configs, evidence and payloads (numpy values become plain numbers)."""
    return json.dumps(o, default=_plain)


def nan_if_null(v: object) -> float:
    """A REAL cell as a float: NULL reads nan."""
    return float("nan") if v is None else float(v)


def to_blob(values: np.ndarray) -> bytes:
    """A 1-D array as little-endian float64 bytes (nan and inf kept exactly)."""
    return np.ascontiguousarray(values, dtype="<f8").tobytes()


def from_blob(data: bytes) -> np.ndarray:
    """Inverse of to_blob."""
    return np.frombuffer(data, dtype="<f8").astype(np.float64)


def _start_token(pid: int) -> str:
    """The process start time from /proc (tells a live pid from a reused one); '' if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if rest[0] in "ZX" else rest[19]  # state, then field 22 = starttime


def writer_id() -> str:
    """'host:pid:start token' of this process, stored with a run it writes."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_token(os.getpid())}"


def writer_alive(writer: str | None, updated: float | None) -> bool:
    """Whether the process that wrote a 'running' run still runs (by pid here, by age elsewhere)."""
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
