"""LiveRun: a watched model's run in the RunStore, written while it trains (used by `run` and the HF callback).

Per-step losses stay on the device until a flush, every FLUSH_EVERY steps: one host copy for
all of them, then one transaction with the new trace rows. A process killed mid-training leaves
a readable partial run ('interrupted' once its writer is gone).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..store import RunStore

FLUSH_EVERY = 50  # optimizer steps between writes (one host sync for their losses)


class LiveRun:
    """One run in `store`: `step(i, loss)` per optimizer step, `finish(status, diagnosis)` at the end."""

    def __init__(self, store: RunStore, spec: dict, config: dict, trace, kind: str,
                 flush_every: int = FLUSH_EVERY) -> None:
        self.store, self.flush_every = store, flush_every
        self.run_id = store.start_run(spec, config, kind=kind)
        self._rec = store.recorder(self.run_id, trace, commit_every=10**9)  # flushed here, not per call
        self._losses: list[tuple[int, torch.Tensor | float | None]] = []

    def step(self, step: int, loss: torch.Tensor | float | None) -> None:
        """Keep step `step`'s loss; write every `flush_every` steps."""
        self._losses.append((step, loss))
        if len(self._losses) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write the kept losses (one host copy) and the trace rows recorded since the last flush."""
        known = [(s, v) for s, v in self._losses if v is not None]
        values = (torch.stack([torch.as_tensor(v).detach().float().cpu().reshape(()) for _, v in known]).tolist()
                  if known else [])
        for (s, _), v in zip(known, values):
            self._rec(s, v)
        self._losses = []
        self._rec.flush()

    def finish(self, status: str, diagnosis=None) -> int:
        """Write what is left, the final status and the diagnosis; returns the run id."""
        self.flush()
        self.store.finish_run(self.run_id, status, diagnosis=diagnosis)
        return self.run_id

    def report(self, out: str | Path) -> Path:
        """Write the run's HTML report to `out`."""
        from ..report.html import write_report

        return write_report(self.store, self.run_id, out)
