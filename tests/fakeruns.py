"""Hand-built runs with planted, known numbers (for the store, figure and report tests).

A `planted_trace` is what a probe would record on a deep MLP whose per-sample error signal
changes by a fixed factor per layer: 0.25 (vanishing), 4 (exploding) or 1 (healthy), with
5% multiplicative step-to-step noise, so medians are exact up to that noise.
"""
from __future__ import annotations

import math

import numpy as np

from graddoctor.diagnose.findings import Cause, Diagnosis, Finding
from graddoctor.probe.trace import LAYER_METRICS, STEP_METRICS, LayerInfo, Trace
from graddoctor.training import History

GAIN = {"vanishing": 0.25, "exploding": 4.0, "healthy": 1.0}
ACT = {"vanishing": "sigmoid", "exploding": "relu", "healthy": "relu"}
PREACT_STD = {"vanishing": 4.0, "exploding": 30.0, "healthy": 1.2}  # out RMS of each hidden layer
XSS = "<script>alert(1)</script>"


def spec_for(kind: str, depth: int = 8, width: int = 32) -> dict:
    """A NetSpec-shaped dict for a planted run."""
    return {"kind": "mlp", "depth": depth, "width": width, "activation": ACT[kind], "init": "xavier_normal",
            "in_shape": [64], "out_features": 10}


def planted_trace(kind: str = "vanishing", depth: int = 8, width: int = 32, steps: int = 12,
                  seed: int = 0, first_name: str | None = None) -> Trace:
    """depth hidden Linear layers + a 10-unit head, `steps` recorded steps of planted statistics."""
    rng = np.random.default_rng(seed)
    act = ACT[kind]
    names = [first_name or "body.0.linear"] + [f"body.{i}.linear" for i in range(1, depth)] + ["head"]
    outs = [width] * depth + [10]
    infos = [LayerInfo(n, "Linear", (64 if i == 0 else width) * o, None if i == 0 else act, o, 64 if i == 0 else width)
             for i, (n, o) in enumerate(zip(names, outs))]
    trace = Trace(infos, {"planted": kind})
    n = len(infos)
    signal = GAIN[kind] ** (n - 1 - np.arange(n))  # per-sample norm; the head's is 1
    m = LAYER_METRICS.index
    for s in range(steps):
        noise = np.exp(rng.normal(0, 0.05, n))
        lv = np.full((n, len(LAYER_METRICS)), np.nan)
        lv[:, m("delta_rms")] = signal * noise / np.sqrt(outs)
        lv[:, m("grad_rms")] = 0.5 * lv[:, m("delta_rms")]
        lv[:, m("grad_norm")] = lv[:, m("grad_rms")] * np.sqrt([x.numel for x in infos])
        lv[:, m("weight_rms")] = 1 / math.sqrt(width)
        lv[:, m("out_rms")] = PREACT_STD[kind]
        lv[:, m("act_mean")] = 0.5 if act == "sigmoid" else 0.4
        lv[:, m("act_std")] = 0.45
        lv[:, m("saturated")] = 0.6 if kind == "vanishing" else 0.0
        lv[:, m("dead")] = 0.05 if act == "relu" else 0.0
        lv[0, m("saturated")] = lv[0, m("dead")] = np.nan  # the input is data, not an activation
        lv[:, m("nonfinite_grad")] = lv[:, m("nonfinite_act")] = 0
        loss = 2.30 if kind == "vanishing" else 2.3 * math.exp(-s / 8)
        trace.append(s, lv, np.array([loss, float(np.sqrt((lv[:, m("grad_norm")] ** 2).sum())), 0.0])[
            : len(STEP_METRICS)])
    return trace


def planted_history(kind: str = "vanishing", epochs: int = 3, steps: int = 12) -> History:
    """A History matching planted_trace: flat for vanishing, learning for the others."""
    acc = [0.1] * epochs if kind == "vanishing" else [0.5 + 0.15 * e for e in range(epochs)]
    loss = [2.30 if kind == "vanishing" else 2.3 * math.exp(-s / 8) for s in range(steps)]
    return History(epoch=list(range(1, epochs + 1)), train_loss=[2.3] * epochs, train_acc=acc,
                   val_loss=[2.3] * epochs, val_acc=acc, step_loss=loss, seconds=1.5)


def planted_diagnosis(trace: Trace, kind: str = "vanishing") -> Diagnosis:
    """A Diagnosis as the rules would write it for a planted run (a planted cause with evidence)."""
    if kind == "healthy":
        return Diagnosis([], trace.layer_names, {"steps": trace.steps.tolist()})
    cause = Cause("saturating_activation" if kind == "vanishing" else "init_too_large",
                  f"median gain per layer {GAIN[kind]:g}", {"gain": GAIN[kind], "layer": trace.layer_names[0]}, 2.0)
    finding = Finding(kind, "critical", tuple(trace.layer_names[:3]),
                      f"the error signal {'shrinks' if kind == 'vanishing' else 'grows'} "
                      f"{1 / GAIN[kind] if kind == 'vanishing' else GAIN[kind]:g}x per layer",
                      {"decades": 5.4, "signal_decades": {n: -0.6 * (len(trace.layers) - 1 - i)
                                                          for i, n in enumerate(trace.layer_names)}},
                      (cause,), ("relu", "he_init"))
    return Diagnosis([finding], trace.layer_names, {"steps": trace.steps.tolist()})


def with_values(trace: Trace, metric: str, steps, layers, value: float) -> Trace:
    """A copy of `trace` with trace[metric][steps, layers] = value (rebuilt through the public API)."""
    out = Trace(trace.layers, trace.meta)
    lv = np.stack([trace[m] for m in LAYER_METRICS], axis=-1)
    sv = np.stack([trace[m] for m in STEP_METRICS], axis=-1)
    lv[steps, layers, LAYER_METRICS.index(metric)] = value
    for i, s in enumerate(trace.steps):
        out.append(int(s), lv[i], sv[i])
    return out
