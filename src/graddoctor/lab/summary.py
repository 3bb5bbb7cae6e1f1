"""Pure: one run's Trace + History -> the numbers the lab's tables, conclusions and figures use.

The gradient ratio is the per-sample error-signal norm ||dL/dh|| at the first hidden layer's
pre-activation over the last hidden layer's, in decades (log10): the product the chain rule
builds, the quantity the diagnosis judges and the theory predicts. "At init" is the first
recorded step (the network as built); "trained" is the median over the steps the diagnosis
judges (the last half of the finite recorded steps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..diagnose.api import diagnose
from ..diagnose.findings import Diagnosis
from ..diagnose.signals import median, signals, window
from ..errors import GradDoctorError
from ..probe.trace import Trace
from ..training import History


@dataclass
class RunSummary:
    """What the lab reports about one run."""

    label: str
    coords: dict[str, str]  # axis -> point label
    run_id: int
    depth: int  # hidden layers measured
    decades_init: float  # log10 ||delta_first|| / ||delta_last|| at step 0 (nan: not finite)
    decades_trained: float  # the same, median over the judged steps
    verdict_init: str  # 'healthy', 'vanishing', ... at step 0 ('n/a': not diagnosable)
    verdict_trained: str  # the same over training (the stored diagnosis)
    val_acc: float  # final validation accuracy (nan if no epoch finished)
    first_loss: float  # training loss of the first step
    final_loss: float  # training-set loss after the last epoch (inf if it diverged)
    diverged_at: int | None  # first step with a non-finite loss
    seconds: float
    profile_init: np.ndarray = field(repr=False)  # weight-gradient RMS per hidden layer + head, step 0
    profile_trained: np.ndarray = field(repr=False)  # the same, median over the judged steps
    steps: np.ndarray = field(repr=False)  # recorded steps
    act_means: np.ndarray = field(repr=False)  # (steps, depth): mean output of each hidden layer
    loss_curve: np.ndarray = field(repr=False)  # training loss of every step
    seed: int = 0  # the run's seed (weights, data split and order)
    deriv_rms_init: float = math.nan  # RMS of phi'(h) over the hidden layers' units at step 0
    extra: dict = field(default_factory=dict)  # per-experiment numbers (e.g. the theory's prediction)

    @property
    def per_layer_init(self) -> float:
        """The average per-layer factor of the error signal at init (10 ** (decades / (L - 1)))."""
        return 10 ** (self.decades_init / max(self.depth - 1, 1)) if math.isfinite(self.decades_init) else math.nan

    @property
    def learned(self) -> float:
        """Fraction of the first loss removed by training (1: to zero, <= 0: none; -inf: diverged)."""
        if self.diverged_at is not None or not math.isfinite(self.final_loss):
            return -math.inf
        return 1 - self.final_loss / self.first_loss if self.first_loss > 0 else math.nan


def verdict(d: Diagnosis | None) -> str:
    """'healthy', the sorted finding kinds, or 'n/a'."""
    if d is None:
        return "n/a"
    return "healthy" if d.healthy else ", ".join(sorted(d.kinds()))


def hidden_layers(trace: Trace) -> list[int]:
    """Trace positions of a NetSpec net's hidden Linear/Conv layers (shortcuts excluded), in order."""
    return [i for i, x in enumerate(trace.layers) if x.name.endswith(".linear")]


def _judged(log_signal: np.ndarray) -> np.ndarray:
    finite = np.flatnonzero(np.isfinite(log_signal).all(axis=1))
    return finite[window(len(finite))]


def _at_init(trace: Trace) -> str:
    try:
        return verdict(diagnose(trace.select([0])))
    except GradDoctorError:
        return "n/a"


def summarise(trace: Trace, history: History, diagnosis: Diagnosis | None, label: str = "",
              coords: dict | None = None, run_id: int = 0, seed: int = 0) -> RunSummary:
    """The lab's numbers for one run."""
    hidden = hidden_layers(trace)
    if len(trace) == 0 or len(hidden) < 2:
        raise GradDoctorError(f"{label or 'run'}: needs a recorded NetSpec network with 2+ hidden layers")
    s = signals(trace)
    ends = s.log_signal[:, [hidden[0], hidden[-1]]]
    ratio = ends[:, 0] - ends[:, 1]
    judged = _judged(ends)
    with np.errstate(invalid="ignore"):
        trained = float(np.median(ratio[judged])) if len(judged) else math.nan
    cols = hidden + [len(trace.layers) - 1]  # + the head (the output layer)
    grad = trace["grad_rms"][:, cols]
    fed = hidden[1:] + [len(trace.layers) - 1]  # a layer's input is the hidden layer before it
    d = trace["act_deriv_rms"][0, fed]  # phi' of each hidden layer's units, as the layer it feeds sees them
    d = d[np.isfinite(d)]
    deriv = float(np.sqrt(np.mean(d**2))) if len(d) else math.nan
    losses = [v for v in history.step_loss if math.isfinite(v)]
    final = history.train_loss[-1] if history.train_loss and history.diverged_at is None else math.inf
    return RunSummary(
        label=label, coords=dict(coords or {}), run_id=run_id, depth=len(hidden),
        decades_init=float(ratio[0]) if np.isfinite(ratio[0]) else math.nan, decades_trained=trained,
        verdict_init=_at_init(trace), verdict_trained=verdict(diagnosis), val_acc=history.final_val_acc,
        first_loss=losses[0] if losses else math.nan, final_loss=final, diverged_at=history.diverged_at,
        seconds=history.seconds, profile_init=grad[0],
        profile_trained=median(grad, judged) if len(judged) else np.full(len(cols), np.nan),
        steps=trace.steps, act_means=trace["act_mean"][:, fed], loss_curve=np.asarray(history.step_loss, float),
        seed=seed, deriv_rms_init=deriv)
