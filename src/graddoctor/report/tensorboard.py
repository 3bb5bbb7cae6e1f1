"""Per-layer statistics as TensorBoard scalars and histograms (`graddoctor export RUN --tensorboard DIR`).

`tensorboard` is an optional extra: `events` is pure and always works; writing needs
`torch.utils.tensorboard`, which needs the `tensorboard` package (a clear hint if missing).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import GradDoctorError
from ..probe.trace import Trace

if TYPE_CHECKING:
    from ..store import RunStore

SCALAR_METRICS = ("grad_rms", "delta_rms", "update_ratio", "saturated", "dead")  # one chart per layer
HISTOGRAM_METRICS = ("grad_rms", "delta_rms")  # log10 across layers, one histogram per step
STEP_SCALARS = ("loss", "global_grad_norm")
INSTALL_HINT = ("the TensorBoard export needs the tensorboard package; install it with: pip install tensorboard "
                "(or use `graddoctor export RUN --csv DIR`)")


def events(trace: Trace) -> Iterator[tuple[str, str, float | np.ndarray, int]]:
    """(kind, tag, value, step) for every finite statistic: kind is 'scalar' or 'histogram'."""
    cols = {m: trace[m] for m in SCALAR_METRICS + HISTOGRAM_METRICS + STEP_SCALARS}
    tags = [f"{i + 1:02d} {name}" for i, name in enumerate(trace.layer_names)]  # sorts by depth
    for k, step in enumerate(trace.steps.tolist()):
        for m in STEP_SCALARS:
            if np.isfinite(cols[m][k]):
                yield "scalar", f"run/{m}", float(cols[m][k]), step
        for m in SCALAR_METRICS:
            for tag, v in zip(tags, cols[m][k].tolist()):
                if np.isfinite(v):
                    yield "scalar", f"{m}/{tag}", v, step
        for m in HISTOGRAM_METRICS:
            v = cols[m][k]
            v = v[np.isfinite(v) & (v > 0)]
            if len(v):
                yield "histogram", f"log10 {m} across layers", np.log10(v), step


def summary_writer(log_dir: str | Path):
    """torch's SummaryWriter, or a GradDoctorError with the install hint."""
    try:
        import tensorboard  # noqa: F401 - torch.utils.tensorboard needs it
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise GradDoctorError(INSTALL_HINT) from None
    return SummaryWriter(log_dir=str(log_dir))


def write_trace(trace: Trace, log_dir: str | Path) -> int:
    """Write a Trace's statistics as TensorBoard event files in log_dir; returns the event count."""
    out = TraceWriter(log_dir)
    try:
        out.write_new(trace)
    finally:
        out.close()
    return sum(1 for _ in events(trace))


class TraceWriter:
    """Streams a growing Trace to TensorBoard: each call writes the rows added since the last.

    A probe sink (graddoctor.probe.sinks): watch(model, sinks=[TraceWriter(DIR)]), or
    watch(model, tensorboard=DIR) for short.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.writer = summary_writer(log_dir)
        self.rows = 0

    def write_new(self, trace: Trace) -> None:
        """Write the trace's rows not written yet."""
        n = len(trace)
        if n > self.rows:
            for kind, tag, value, step in events(trace.select(slice(self.rows, n))):
                (self.writer.add_scalar if kind == "scalar" else self.writer.add_histogram)(tag, value, step)
            self.writer.flush()
            self.rows = n

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def export_tensorboard(store: RunStore, run_id: int, log_dir: str | Path) -> Path:
    """Write a stored run for TensorBoard: `tensorboard --logdir log_dir`."""
    trace = store.load_trace(run_id)
    out = Path(log_dir) / f"run-{run_id}"
    write_trace(trace, out)
    return out
