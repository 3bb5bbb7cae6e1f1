"""Series: per-layer arrays recorded at some steps, kept beside the Trace's fixed metrics.

A series is named (e.g. "time_input_grad": the error signal per time step of a recurrent
layer) and keyed by layer name; each recorded step stores one 1-D float64 array, whose length
may change from step to step (sequence lengths vary). Saved into the Trace's .npz as plain
arrays (nan-padded), so files stay pickle-free, and files without series load as before.
Series of the whole model (e.g. "block_delta_rms": one value per block, in forward order,
named in trace.meta["blocks"]) use the layer key MODEL ("").
"""
from __future__ import annotations

import numpy as np

MODEL = ""  # the layer key of a model-level series


class Series:
    """name -> layer -> step -> 1-D array; what Trace.series holds."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], dict[int, np.ndarray]] = {}

    def add(self, name: str, layer: str, step: int, values: np.ndarray) -> None:
        """Record `values` (1-D) for one layer at one step (a second call for that step replaces it)."""
        self._data.setdefault((name, layer), {})[int(step)] = np.asarray(values, np.float64).reshape(-1)

    def keys(self) -> list[tuple[str, str]]:
        """(series name, layer name) pairs recorded, in the order first seen."""
        return list(self._data)

    def layers(self, name: str) -> list[str]:
        """Layers that have series `name`."""
        return [layer for n, layer in self._data if n == name]

    def get(self, name: str, layer: str = MODEL) -> tuple[np.ndarray, np.ndarray]:
        """(steps (k,), values (k, longest length)), ordered by step, nan-padded; empty if absent."""
        by_step = self._data.get((name, layer), {})
        steps = np.array(sorted(by_step), dtype=np.int64)
        width = max((len(v) for v in by_step.values()), default=0)
        out = np.full((len(steps), width), np.nan)
        for i, s in enumerate(steps):
            out[i, : len(by_step[s])] = by_step[s]
        return steps, out

    def select(self, steps: np.ndarray) -> Series:
        """The entries at these steps only."""
        keep = {int(s) for s in steps}
        out = Series()
        for key, by_step in self._data.items():
            part = {s: v for s, v in by_step.items() if s in keep}
            if part:
                out._data[key] = part
        return out

    def __len__(self) -> int:
        return len(self._data)

    # -- files: header entries + arrays for Trace.save / Trace.load -------------------------
    def to_npz(self) -> tuple[list[dict], dict[str, np.ndarray]]:
        """(JSON header entries, arrays keyed 'series_<i>' and 'series_<i>_steps')."""
        header, arrays = [], {}
        for i, (name, layer) in enumerate(self._data):
            steps, values = self.get(name, layer)
            lengths = [len(self._data[(name, layer)][int(s)]) for s in steps]
            header.append({"name": name, "layer": layer, "key": f"series_{i}", "lengths": lengths})
            arrays[f"series_{i}"], arrays[f"series_{i}_steps"] = values, steps
        return header, arrays

    @classmethod
    def from_npz(cls, header: list[dict], arrays) -> Series:
        """Inverse of to_npz (`arrays`: the open NpzFile)."""
        out = cls()
        for entry in header:
            values, steps = arrays[entry["key"]], arrays[entry["key"] + "_steps"]
            for s, row, n in zip(steps, values, entry["lengths"]):
                out.add(entry["name"], entry["layer"], int(s), row[:n])
        return out
