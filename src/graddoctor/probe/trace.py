"""Trace: the columnar record of a probed run — steps x layers x metrics, numpy-backed.

Saved as .npz (arrays) + a JSON string (layer names, metadata); loading never executes code
(`allow_pickle=False`). float64 throughout: gradient ratios in deep nets reach 1e-137.
Memory: 8 bytes x steps x layers x len(LAYER_METRICS) — 1,000 steps x 100 layers = 12.8 MB.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import GradDoctorError
from .series import Series

# Per step, per layer. A layer is a leaf module that owns parameters, in forward order.
LAYER_METRICS: tuple[str, ...] = (
    "grad_norm",       # ||dL/dW|| of the layer's weight parameters (all non-bias params)
    "grad_rms",        # grad_norm / sqrt(numel)
    "bias_grad_norm",  # ||dL/db|| (nan if the layer has no bias)
    "weight_rms",      # RMS of the weight parameters
    "update_ratio",    # RMS(W_after_step - W_before) / RMS(W_before) (nan if not measured)
    "delta_rms",       # RMS of the error signal dL/d(layer output) over all its elements
    "input_grad_rms",  # RMS of dL/d(layer input) (nan when the input needs no grad)
    "out_rms",         # RMS of the layer's output (forward signal)
    "act_mean",        # mean of what the layer receives as input
    "act_std",         # std of what the layer receives as input
    "act_deriv_rms",   # RMS of phi' of the activation that produced the input (nan if unknown)
    "saturated",       # fraction of input units whose activation derivative < 1% of its max
    "dead",            # fraction of input units that are exactly zero for every sample in the batch
    "nonfinite_grad",  # count of NaN/Inf entries in the layer's parameter gradients
    "nonfinite_act",   # count of NaN/Inf entries in the layer's output
    "grad_zero_frac",  # fraction of exactly-zero parameter-gradient elements (16-bit runs only, else nan)
)
# Per step, model-level.
STEP_METRICS: tuple[str, ...] = (
    "loss",
    "global_grad_norm",  # ||all parameter gradients||
    "nonfinite_loss",    # 1 if the loss was NaN/Inf
    "lr",                # learning rate of the optimizer's first param group (nan without an optimizer)
)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LayerInfo:
    """One probed layer: qualified module name, class name, weight size, input activation."""

    name: str
    type: str
    numel: int
    activation: str | None = None  # registry name of the activation feeding this layer's input
    out_size: int = 0  # elements of the layer's output per sample (0: unknown); turns RMS into norms
    in_size: int = 0  # elements of the layer's input per sample (0: unknown)


class Trace:
    """Columnar record of per-step, per-layer statistics; append while training."""

    def __init__(self, layers: list[LayerInfo] | None = None, meta: dict | None = None) -> None:
        self._layers: list[LayerInfo] = list(layers or [])
        self._source = None  # the recorder that buffers rows (a Probe): flushed before any read
        self._syncing = False
        self._meta: dict = dict(meta or {})
        self.series = Series()  # per-layer arrays beside the metrics (e.g. per time step, recurrent.py)
        self._n = 0
        self._steps = np.zeros(16, dtype=np.int64)
        self._layer = np.full((16, len(self._layers), len(LAYER_METRICS)), np.nan)
        self._step = np.full((16, len(STEP_METRICS)), np.nan)

    # -- building ---------------------------------------------------------------------
    def attach_source(self, flush) -> None:
        """Have `flush()` called before every read, so a Trace read while recording is current."""
        self._source = flush

    def _sync(self) -> None:
        if self._source is not None and not self._syncing:
            self._syncing = True  # flush() may read the trace: no re-entry
            try:
                self._source()
            finally:
                self._syncing = False

    @property
    def meta(self) -> dict:
        """Run metadata (JSON-able): what the recorder knows beyond the arrays (optimizer, dtypes, ...)."""
        self._sync()
        return self._meta

    @meta.setter
    def meta(self, value: dict) -> None:
        self._meta = dict(value)

    @property
    def structure(self) -> dict | None:
        """The network's structure learnt from the first recorded forward (probe/structure.py), or None."""
        return self.meta.get("structure")

    @property
    def layers(self) -> list[LayerInfo]:
        """The probed layers, in forward order."""
        self._sync()
        return self._layers

    def add_layers(self, infos: list[LayerInfo]) -> None:
        """Add layers seen for the first time (earlier steps get nan for them)."""
        if not infos:
            return
        self._layers.extend(infos)
        pad = np.full((self._layer.shape[0], len(infos), len(LAYER_METRICS)), np.nan)
        self._layer = np.concatenate([self._layer, pad], axis=1)

    def append(self, step: int, layer_values: np.ndarray, step_values: np.ndarray) -> None:
        """Record one step: layer_values (n_layers, n_metrics), step_values (n_step_metrics,), in schema order."""
        if self._n == len(self._steps):  # amortised doubling, no per-step reallocation
            grow = len(self._steps)
            self._steps = np.concatenate([self._steps, np.zeros(grow, np.int64)])
            self._layer = np.concatenate([self._layer, np.full((grow,) + self._layer.shape[1:], np.nan)])
            self._step = np.concatenate([self._step, np.full((grow, len(STEP_METRICS)), np.nan)])
        self._steps[self._n] = step
        # metrics are only ever appended to the schema: shorter rows (older writers) leave the rest nan
        self._layer[self._n, : layer_values.shape[0], : layer_values.shape[1]] = layer_values
        self._step[self._n, : len(step_values)] = step_values
        self._n += 1

    def set_step_metric(self, metric: str, value: float) -> None:
        """Overwrite a step metric of the latest recorded step (e.g. a loss known only after it)."""
        if not self._n:
            raise GradDoctorError("no step has been recorded yet")
        self._step[self._n - 1, STEP_METRICS.index(metric)] = value

    # -- reading ----------------------------------------------------------------------
    def __len__(self) -> int:
        self._sync()
        return self._n

    @property
    def layer_names(self) -> list[str]:
        """Qualified module names in forward order."""
        return [layer.name for layer in self.layers]

    @property
    def steps(self) -> np.ndarray:
        """Indices of the recorded steps, shape (n_steps,)."""
        self._sync()
        return self._steps[: self._n].copy()

    def __getitem__(self, metric: str) -> np.ndarray:
        """A layer metric as (n_steps, n_layers), or a step metric as (n_steps,)."""
        self._sync()
        if metric in LAYER_METRICS:
            return self._layer[: self._n, :, LAYER_METRICS.index(metric)].copy()
        if metric in STEP_METRICS:
            return self._step[: self._n, STEP_METRICS.index(metric)].copy()
        if metric == "gain":
            return self.gain()
        raise GradDoctorError(
            f"unknown metric {metric!r}; choose one of: {', '.join(LAYER_METRICS + STEP_METRICS + ('gain',))}")

    def gain(self) -> np.ndarray:
        """Per-layer gain delta_rms(l) / delta_rms(l+1), (n_steps, n_layers); last layer = nan."""
        d = self["delta_rms"]
        g = np.full_like(d, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            g[:, :-1] = d[:, :-1] / d[:, 1:]
        return g

    def nbytes(self) -> int:
        """Bytes held by the arrays (capacity included)."""
        return self._steps.nbytes + self._layer.nbytes + self._step.nbytes

    def select(self, index: np.ndarray | slice) -> Trace:
        """A new Trace with a subset of the recorded steps (by position)."""
        self._sync()
        lv, sv, st = self._layer[: self._n][index], self._step[: self._n][index], self.steps[index]
        out = Trace(self.layers, _meta_until(self.meta, int(st.max()) if len(st) else -1))
        for i in range(len(st)):
            out.append(int(st[i]), lv[i], sv[i])
        out.series = self.series.select(st)
        return out

    def to_dataframe(self):
        """Long-format pandas DataFrame: one row per (step, layer) with every layer metric."""
        from ..errors import require

        pd = require("pandas", "all")
        n, m = self._n, len(self.layers)
        df = pd.DataFrame(self._layer[:n].reshape(n * m, len(LAYER_METRICS)), columns=list(LAYER_METRICS))
        df.insert(0, "layer", np.tile(self.layer_names, n))
        df.insert(0, "depth", np.tile(np.arange(m), n))
        df.insert(0, "step", np.repeat(self.steps, m))
        return df

    # -- files ------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write to an .npz file (no pickle)."""
        self._sync()
        path = Path(path)
        header = {"format": FORMAT_VERSION, "layers": [asdict(x) for x in self.layers], "meta": self.meta,
                  "layer_metrics": list(LAYER_METRICS), "step_metrics": list(STEP_METRICS)}
        header["series"], series = self.series.to_npz()  # older readers ignore both
        with open(path, "wb") as f:
            np.savez_compressed(f, header=np.array(json.dumps(header)), steps=self.steps,
                                layer=self._layer[: self._n], step=self._step[: self._n], **series)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read a file written by save()."""
        path = Path(path)
        if not path.exists():
            raise GradDoctorError(f"no trace file at {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                steps, layer, step = z["steps"], z["layer"], z["step"]
                series = Series.from_npz(header.get("series", []), z)  # absent in older files
        except (OSError, ValueError, KeyError) as exc:
            raise GradDoctorError(f"{path} is not a graddoctor trace file ({exc})") from None
        if header.get("format", 0) > FORMAT_VERSION:
            raise GradDoctorError(f"{path} was written by a newer graddoctor (format {header['format']})")
        lm, sm = header["layer_metrics"], header["step_metrics"]
        out = cls([LayerInfo(**x) for x in header["layers"]], header["meta"])
        for i in range(len(steps)):
            lv = np.full((len(out.layers), len(LAYER_METRICS)), np.nan)
            sv = np.full(len(STEP_METRICS), np.nan)
            for j, name in enumerate(lm):
                if name in LAYER_METRICS:
                    lv[:, LAYER_METRICS.index(name)] = layer[i, :, j]
            for j, name in enumerate(sm):
                if name in STEP_METRICS:
                    sv[STEP_METRICS.index(name)] = step[i, j]
            out.append(int(steps[i]), lv, sv)
        out.series = series
        return out

    def __repr__(self) -> str:
        return f"Trace({self._n} steps x {len(self.layers)} layers x {len(LAYER_METRICS)} metrics)"


def _meta_until(meta: dict, last: int) -> dict:
    """`meta` with the every-step non-finite record cut to steps <= `last` (a selection ends there)."""
    rec = meta.get("nonfinite")
    if not rec:
        return meta
    cut = dict(rec)
    if cut.get("first_step") is not None and cut["first_step"] > last:
        cut["first_step"] = cut["what"] = None
    if cut.get("input_first_step") is not None and cut["input_first_step"] > last:
        cut["input_first_step"] = None
    return {**meta, "nonfinite": cut}
