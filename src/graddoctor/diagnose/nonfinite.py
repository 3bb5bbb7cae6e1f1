"""Pure: NaN/Inf — when it first happened (every step, recorded or not) and what produced it.

The probe checks the loss, the gradients and the input batch for non-finite values on every
step, also the unrecorded ones (`trace.meta["nonfinite"]`, probe/checks.py), so a run that
diverged between two recorded steps is never judged healthy. The cause is evidence, not a
guess: a NaN already in the input batch is `non_finite_input`; the first module (in forward
order) whose output went non-finite on a recorded step is `non_finite_forward` (when that
step was not recorded, the finding says so); a loss or gradient that grew before it blew up
points at the learning rate. 16-bit gradients flushed to zero are precision_underflow().
"""
from __future__ import annotations

import numpy as np

from . import thresholds as T
from .causes import rank
from .evidence import _finding, _judged, _lr_cause, input_scale_cause
from .findings import Cause, Finding
from .impact import judge_impact
from .signals import Signals, median


def _first_bad_step(s: Signals) -> tuple[int | None, str | None]:
    """The first step with a NaN/Inf loss or gradient: the every-step record, else the recorded steps."""
    rec = s.meta.get("nonfinite") or {}
    first, what = rec.get("first_step"), rec.get("what")
    bad_loss = np.nan_to_num(s.step["nonfinite_loss"]) > 0
    bad_grad = (np.nan_to_num(s.layer["nonfinite_grad"]) > 0).any(axis=1)
    for mask, kind in ((bad_loss, "loss"), (bad_grad, "grad")):
        if mask.any():
            step = int(s.steps[np.argmax(mask)])
            if first is None or step < first:
                first, what = step, kind
    return first, what


def non_finite(s: Signals) -> list[Finding]:
    """NaN/Inf in the loss, the gradients, the activations or the input batch (an absolute check)."""
    first, what = _first_bad_step(s)
    bad_a = np.nan_to_num(s.layer["nonfinite_act"]) > 0  # (S, L)
    rec = s.meta.get("nonfinite") or {}
    input_step = rec.get("input_first_step")
    if first is None and not bad_a.any() and input_step is None:
        return []
    if first is None:
        first = int(s.steps[np.argmax(bad_a.any(axis=1))]) if bad_a.any() else int(input_step)
        what = what or ("activation" if bad_a.any() else "input")
    recorded = bool(np.any(s.steps == first))
    every = s.meta.get("every", 1)
    causes: list[Cause] = []
    if input_step is not None and input_step <= first:
        causes.append(Cause("non_finite_input", f"the input batch at step {input_step} already holds NaN/Inf "
                            "values: they come from the data, not from the network", {"step": int(input_step)}, 100.0))
    layer_idx: list[int] = []
    row = np.flatnonzero(s.steps == first)
    acts_then = bad_a[row[0]] if len(row) else np.zeros(len(s.names), bool)
    if acts_then.any():
        j = int(np.argmax(acts_then))  # layers are in forward order: the first to go non-finite
        layer_idx = [j]
        score = 1.0 if causes else 50.0  # a NaN input makes every output NaN: the input comes first
        causes.append(Cause("non_finite_forward", f"'{s.names[j]}' is the first module whose output went "
                            f"non-finite at step {first} (every module before it in the forward pass was finite)",
                            {"layer": s.names[j], "step": first}, score))
    elif not recorded:
        note = (f"step {first} was not recorded (every={every}): record every step (watch(..., every=1)) "
                "around it to name the module that produced the first NaN/Inf")
        causes.append(Cause("non_finite_forward", note, {"step": first, "recorded": False}, 0.5))
    lr = _lr_cause(s, _judged(s)) if s.n_steps > 1 else None
    causes += [c for c in (lr, input_scale_cause(s)) if c is not None]
    if first == 0 and input_step is None and not lr:
        causes.append(Cause("init_too_large", "the very first step is already non-finite with a finite input",
                            {"step": first}, 2.0))
    others = sorted(set(np.flatnonzero(bad_a.any(axis=0) | (np.nan_to_num(s.layer["nonfinite_grad"]) > 0).any(0)))
                    - set(layer_idx))
    idx = layer_idx + others
    where = f"first in the output of '{s.names[layer_idx[0]]}'; " if layer_idx else ""
    seen = "a recorded step" if recorded else f"not a recorded step (every={every}); found by the every-step check"
    summary = f"NaN/Inf values: {where}the {what or 'loss'} is non-finite from step {first} ({seen})"
    evidence = {"first_nonfinite_step": first, "what": what, "recorded": recorded,
                "input_first_step": input_step, "layers_with_nonfinite": len(idx)}
    return [_finding("non_finite", "critical", idx, s, summary, evidence, rank(causes))]


def precision_underflow(s: Signals) -> list[Finding]:
    """float16 without a loss scaler: gradient elements flushed to exactly zero."""
    dt = s.meta.get("dtypes") or {}
    half = dt.get("autocast") == "float16" or "float16" in (dt.get("params") or [])
    if not half or dt.get("grad_scaler") or "grad_zero_frac" not in s.layer:
        return []
    judged = _judged(s)
    zero = median(s.layer["grad_zero_frac"], judged)
    dense = [i for i in range(len(s.names)) if "Embedding" not in s.types[i] and np.isfinite(zero[i])]
    hit = [i for i in dense if zero[i] > T.UNDERFLOW_FRACTION]
    if not hit:
        return []
    frac = float(np.median(zero[hit]))
    scaled = _scaled_branch_layers(s, judged)
    if sum(i in scaled for i in hit) >= T.UNDERFLOW_SCALED_SHARE * len(hit):
        # the zeros sit in branches that enter the stream scaled down by design (LayerScale): their
        # gradient is `scale x` the stream's, below float16's range until the scale grows
        return [_finding("by_design", "info", hit, s, (
            f"{len(hit)} layers inside branches scaled down by design (LayerScale) get gradients that are "
            f"{frac:.0%} exact zeros in float16: scale x the stream's gradient is below float16's range; the "
            "scales themselves get gradients and grow, and the branches with them"),
            {"pattern": "scaled_branch_underflow", "zero_fraction": frac, "layers": len(hit)}, [])]
    cause = Cause("precision_underflow", f"float16 {'autocast' if dt.get('autocast') else 'parameters'} without a "
                  f"GradScaler: {frac:.0%} of the gradient elements of {len(hit)} layers are exactly 0 (float16 "
                  "flushes values below 6e-8 to zero)", {"zero_fraction": frac, "layers": len(hit)}, 10.0)
    summary = (f"{len(hit)} of {len(dense)} layers get gradients that are {frac:.0%} exact zeros: float16 "
               "without loss scaling underflows")
    severity = "critical" if frac > T.UNDERFLOW_CRITICAL else "warning"
    f = _finding("vanishing", severity, hit, s, summary,
                 {"zero_fraction": {s.names[i]: float(zero[i]) for i in hit}, "decades": float("nan"),
                  "worst_gain_layer": s.names[max(hit, key=lambda i: zero[i])]}, [cause])
    return [judge_impact(s, f, hit, judged)]  # during training: harmful only if those layers stop learning


def _scaled_branch_layers(s: Signals, judged: np.ndarray) -> set[int]:
    """Layers inside branches whose exit signal sits far below their block's output (a LayerScale)."""
    st, out = s.structure, set()
    if st is None or s.block_log is None:
        return out
    for k, b in enumerate(st.blocks):
        for br in b.branches:
            if br.exits and b.residual:
                rel = median(s.log_rms[:, list(br.exits)] - s.block_log[:, k:k + 1], judged)
                if np.isfinite(rel).any() and np.nanmax(rel) < -T.UNDERFLOW_SCALE_DECADES:
                    out |= set(br.layers)
    return out
