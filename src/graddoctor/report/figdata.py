"""The numbers behind each figure and table, as pure functions of stored data (Trace, History, rows).

Quantities are computed here; figures.py only draws them; `load_report_data` is the one
function that reads a RunStore. A per-layer number is the median over the recorded steps
(ignoring nan), so one noisy step does not move the picture.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields

import numpy as np

from .. import activations
from ..diagnose.findings import Diagnosis
from ..diagnose.signals import per_sample_norm
from ..probe.trace import Trace
from ..store import RunInfo, RunStore
from ..training import History

CURVE_ACTIVATIONS = ("sigmoid", "tanh", "relu")  # figure 3's panels (the mission's three)
X_RANGE = 8.0  # figure 3's x axis: +-8 covers sigmoid's saturation edge (|x| > 5.99)
MAX_OVERLAYS = 3  # measured pre-activation curves per panel (first, middle and last layer)


def _median(a: np.ndarray) -> np.ndarray:
    """Per-column median over steps, ignoring nan and inf; (S, L) -> (L,)."""
    a = np.where(np.isfinite(a), a, np.nan)
    if len(a) == 0:
        return np.full(a.shape[1:], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns stay nan
        return np.nanmedian(a, axis=0)


def _sizes(trace: Trace, attr: str) -> np.ndarray:
    """Elements per sample of each layer's output/input (1 where unknown)."""
    return np.array([max(int(getattr(x, attr, 0) or 0), 1) for x in trace.layers], float)


@dataclass
class Profile:
    """Figure 1: one run's per-layer gradient RMS against depth."""

    label: str
    depth: np.ndarray  # 1..L, forward order
    values: np.ndarray  # median weight-gradient RMS per layer, (L,)


def depth_profile(trace: Trace, label: str, metric: str = "grad_rms") -> Profile:
    """Median per-layer `metric` (default: weight-gradient RMS) against depth."""
    return Profile(label, np.arange(1, len(trace.layers) + 1), _median(trace[metric]))


@dataclass
class Chain:
    """Figure 2: the backward pass, layer by layer."""

    names: list[str]
    signal: np.ndarray  # per-sample error-signal norm ||dL/d(output)|| per layer, (L,)
    gain: np.ndarray  # signal[l] / signal[l+1]: what layer l+1's backward multiplies by, (L-1,)
    per_sample: bool  # True when layer output sizes were known (norms), False: plain RMS


def backward_chain(trace: Trace) -> Chain:
    """Per-layer error-signal magnitude and the gain between consecutive layers."""
    sizes = _sizes(trace, "out_size")
    sig = per_sample_norm(trace)  # fair across layers of different widths (the diagnosis's measure)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_step_gain = sig[:, :-1] / sig[:, 1:]
    return Chain(trace.layer_names, _median(sig), _median(per_step_gain),
                 bool((sizes > 1).all()))


@dataclass
class ActivationPanel:
    """Figure 3: one activation, its derivative, where it saturates, and the measured inputs."""

    name: str
    x: np.ndarray
    phi: np.ndarray
    dphi: np.ndarray
    flat: list[tuple[float, float]]  # x intervals where phi' < SATURATION_FRACTION x max phi'
    measured: list[tuple[str, float]] = field(default_factory=list)  # (layer label, sigma) Gaussians
    flat_fraction: tuple[str, float] | None = None  # ('saturated' | 'dead', measured median fraction)


def _intervals(x: np.ndarray, mask: np.ndarray) -> list[tuple[float, float]]:
    """Runs of True in mask as (start, end) x intervals; inner edges halfway between grid points."""
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1  # first index of each new run
    bounds = np.concatenate([[x[0]], (x[edges - 1] + x[edges]) / 2, [x[-1]]])
    starts = np.concatenate([[0], edges])
    return [(float(bounds[i]), float(bounds[i + 1])) for i, s in enumerate(starts) if mask[s]]


def activation_panels(trace: Trace | None, names: tuple[str, ...] = CURVE_ACTIVATIONS,
                      n: int = 801) -> list[ActivationPanel]:
    """phi and phi' on a grid, flat regions, and the run's pre-activation spread where it applies.

    The trace keeps moments only, so the measured pre-activations of a layer fed by `name` are
    drawn as a zero-mean Gaussian whose sigma is the output RMS of the layer before it.
    """
    import torch

    x = torch.linspace(-X_RANGE, X_RANGE, n, dtype=torch.float64)
    panels = []
    for name in names:
        act = activations.get(name)
        d = act.deriv(x, 0.0)
        flat = (d < activations.SATURATION_FRACTION * act.max_deriv).numpy()
        panel = ActivationPanel(name, x.numpy(), act.fn(x, 0.0).numpy(), d.numpy(), _intervals(x.numpy(), flat))
        if trace is not None and len(trace):
            fed = [i for i, info in enumerate(trace.layers) if i > 0 and info.activation == name]
            if fed:
                rms = _median(trace["out_rms"])
                picks = sorted({fed[0], fed[len(fed) // 2], fed[-1]})[:MAX_OVERLAYS]
                panel.measured = [(f"layer {i + 1}", float(rms[i - 1])) for i in picks
                                  if math.isfinite(rms[i - 1]) and rms[i - 1] > 0]
                what = "dead" if act.relu_family else "saturated"  # ReLU's flat side: units that never fire
                frac = _median(trace[what])[fed]
                if np.isfinite(frac).any():
                    panel.flat_fraction = (what, float(np.nanmedian(frac)))
        panels.append(panel)
    return panels


@dataclass
class Heatmap:
    """Figure 4: log10 of a per-layer metric over training."""

    steps: np.ndarray  # (S,)
    names: list[str]
    log10: np.ndarray  # (L, S); nan where the value was non-finite or not recorded
    metric: str


def heatmap(trace: Trace, metric: str = "grad_rms") -> Heatmap:
    """log10 `metric` as a layer x step grid (zeros and non-finite values become nan)."""
    v = trace[metric].T
    with np.errstate(divide="ignore", invalid="ignore"):
        lg = np.where(np.isfinite(v) & (v > 0), np.log10(np.abs(v)), np.nan)
    return Heatmap(trace.steps, trace.layer_names, lg, metric)


@dataclass
class Series:
    """One line of figure 5."""

    label: str
    x: np.ndarray
    y: np.ndarray


def loss_curves(histories: dict[str, History]) -> list[Series]:
    """Per-step training loss of each run (non-finite steps dropped)."""
    out = []
    for label, h in histories.items():
        y = np.asarray(h.step_loss, float)
        x = np.arange(len(y))
        ok = np.isfinite(y)
        out.append(Series(label, x[ok], y[ok]))
    return out


def accuracy_curves(histories: dict[str, History]) -> list[Series]:
    """Validation accuracy per epoch of each run that has one."""
    return [Series(label, np.asarray(h.epoch, float), np.asarray(h.val_acc, float))
            for label, h in histories.items() if h.val_acc]


@dataclass
class TreatmentBar:
    """Figure 5, right panel: one treat candidate."""

    remedy: str
    accuracy: float  # nan if not measured
    healthy: bool | None


def treatment_bars(rows: list[dict]) -> list[TreatmentBar]:
    """One bar per treatment row, in the stored order."""
    return [TreatmentBar(r["remedy"], float("nan") if r.get("accuracy") is None else float(r["accuracy"]),
                         r.get("healthy")) for r in rows]


def layer_rows(trace: Trace) -> list[dict]:
    """Per-layer table from a trace alone (used when the run has no diagnosis)."""
    chain = backward_chain(trace)
    cols = {m: _median(trace[m]) for m in ("grad_rms", "delta_rms", "saturated", "dead")}
    f = lambda v: float(v) if np.isfinite(v) else None
    return [{"name": x.name, "type": x.type, "activation": x.activation,
             **{m: f(v[i]) for m, v in cols.items()},
             "gain": f(chain.gain[i]) if i < len(chain.gain) else None}
            for i, x in enumerate(trace.layers)]


@dataclass
class ReportData:
    """Everything a report draws, read once from a RunStore."""

    run: RunInfo
    trace: Trace
    history: History
    diagnosis: Diagnosis | None
    treatments: list[dict]
    others: list[tuple[RunInfo, Trace, History]]  # compared runs and the run's children, in order

    def histories(self) -> dict[str, History]:
        """Run label -> History for figure 5: this run, the others, and treatments that kept one."""
        out = {run_label(self.run): self.history}
        out.update({run_label(r): h for r, _, h in self.others})
        for t in self.treatments:
            h = t["payload"].get("history") if isinstance(t["payload"], dict) else None
            if isinstance(h, dict):
                out[f"treat: {t['remedy']}"] = History(**{k: v for k, v in h.items() if k in _HISTORY_FIELDS})
        return out

    def profiles(self) -> list[Profile]:
        """Figure 1's lines: this run first, then the others."""
        return [depth_profile(self.trace, run_label(self.run))] + \
            [depth_profile(t, run_label(r)) for r, t, _ in self.others if len(t)]


_HISTORY_FIELDS = {f.name for f in fields(History)}


def run_label(run: RunInfo) -> str:
    """'#3 sigmoid 20x64: vanishing' from a run's spec and verdict."""
    s = run.spec
    parts = [f"#{run.id}"]
    if "activation" in s:
        parts.append(str(s["activation"]))
    if "depth" in s and "width" in s:
        parts.append(f"{s['depth']}x{s['width']}")
    return " ".join(parts) + (f": {run.verdict}" if run.verdict else "")


def load_report_data(store: RunStore, run_id: int, compare: tuple[int, ...] = ()) -> ReportData:
    """Read one run, its children and the runs to compare with (the only I/O in this module)."""
    run = store.get_run(run_id)
    ids = [r for r in compare if r != run_id] + [c.id for c in store.children(run_id) if c.id not in compare]
    others = [(store.get_run(i), store.load_trace(i), store.load_history(i)) for i in ids]
    return ReportData(run, store.load_trace(run_id), store.load_history(run_id), store.load_diagnosis(run_id),
                      store.treatments(run_id), others)


def spec_summary(spec: dict) -> str:
    """One line for a stored spec: NetSpec's summary when it is one, else 'key=value, ...'."""
    from ..nets import NetSpec

    try:
        return NetSpec.from_dict(spec).summary()
    except (TypeError, ValueError):  # not a NetSpec (e.g. the user's own model): show its keys
        return ", ".join(f"{k}={v}" for k, v in spec.items()) or "(no spec)"
