"""diagnose(trace) and checkup(model, ...): the verdict, where and why."""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import GradDoctorError
from ..probe.trace import Trace
from .findings import SEVERITIES, Diagnosis
from .judged import block_levels, layer_levels
from .rules import RULES
from .signals import Signals, median, signals, window


def layer_table(s: Signals) -> list[dict]:
    """One row per layer (forward order): the numbers the terminal and HTML reports show.

    `signal_decades` is the chain view (against the reference layer); `judged_decades` is what
    the verdict compared, against `compared_with` (judged.py; None: not compared layer by layer);
    `block` is the block (on the depth axis) the layer belongs to, None outside the blocks.
    """
    w = window(s.n_steps)
    rel, gain = median(s.rel, w), median(s.log_gain, w)
    cols = {k: median(s.layer[k], w) for k in ("grad_rms", "saturated", "dead", "update_ratio", "act_std")}
    f = lambda v: None if not np.isfinite(v) else float(v)
    levels = layer_levels(s)
    st = s.structure
    rows = []
    for i in range(len(s.names)):
        against, judged = levels.get(i, (None, None))
        block = st.blocks[st.block_of[i]].name if st is not None and st.block_of[i] >= 0 else None
        rows.append({"name": s.names[i], "type": s.types[i], "activation": s.activations[i], "block": block,
                     "signal_decades": f(rel[i]), "judged_decades": judged, "compared_with": against,
                     "gain": f(10 ** gain[i]) if np.isfinite(gain[i]) else None,
                     **{k: f(v[i]) for k, v in cols.items()}})
    return rows


def diagnose(trace: Trace) -> Diagnosis:
    """Judge a Trace: findings (worst first) with layers, evidence, causes and remedies."""
    if len(trace) == 0:
        raise GradDoctorError("the trace has no recorded steps; run at least one step under watch()")
    if not trace.layers:
        raise GradDoctorError("the trace has no layers")
    if not np.isfinite(trace["delta_rms"]).any() and not np.isfinite(trace["nonfinite_loss"]).any():
        raise GradDoctorError("the trace has no error signals; record it with watch(..., stats='full')")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # all-nan slices (layers or steps not measured) are expected: nan in, nan out, no noise
        warnings.simplefilter("ignore", RuntimeWarning)
        s = signals(trace)
        findings = [f for rule in RULES for f in rule(s)]
        ctx = {"steps": [int(x) for x in s.steps], "at_init": len(trace) == 1,
               "reference_layer": s.names[s.ref], "table": layer_table(s)}
        if s.structure is not None:
            ctx["structure"] = s.structure.to_dict()
            levels = block_levels(s)
            for b in ctx["structure"]["blocks"]:  # dL/d(block output) against the stack's last block, decades
                b["signal_decades"] = levels.get(b["name"])
    findings.sort(key=lambda f: -SEVERITIES.index(f.severity))
    return Diagnosis(findings, s.names, ctx)


def theory_evidence(model: nn.Module, diagnosis: Diagnosis, inputs: Tensor) -> dict | None:
    """Mean-field prediction next to the measurement, for graddoctor's own NetSpec networks at initialisation.

    `inputs` is the batch the diagnosis measured: its mean square and (for BatchNorm) its size
    enter the prediction.
    """
    from ..nets import NetSpec
    from ..theory import predict

    spec = getattr(model, "spec", None)
    if not isinstance(spec, NetSpec) or not isinstance(inputs, Tensor) or not inputs.is_floating_point():
        return None
    input_var = float(inputs.detach().double().pow(2).mean())
    pred = predict(spec, input_var=input_var, batch=len(inputs))
    if not pred.applicable or not pred.layers:
        return None
    # the prediction names its first and last hidden layers (inside residual branches too)
    rows = {r["name"]: r["signal_decades"] for r in diagnosis.context.get("table", [])}
    first, last = rows.get(pred.layers[0]), rows.get(pred.layers[-1])
    if first is None or last is None:
        return None
    # the table holds log10 per-sample norms relative to a reference: the squared ratio is 2x
    return {"predicted_log10_sq_ratio": pred.log10_ratio, "measured_log10_sq_ratio": 2 * (first - last),
            "quantity": "log10 ||delta_1||^2 / ||delta_L||^2 (first vs last hidden layer)",
            "source": pred.reason}


def _default_loss(out: Tensor, y: Tensor) -> Tensor:
    if not y.is_floating_point() and out.dim() >= 2:
        return F.cross_entropy(out.flatten(0, -2) if out.dim() > 2 else out, y.flatten())
    return F.mse_loss(out, y.to(out.dtype).reshape(out.shape))


def checkup(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: Callable | None = None,
            steps: int = 0, optimizer: torch.optim.Optimizer | None = None, every: int = 1) -> Diagnosis:
    """Watch `steps` training steps on one batch (0: one forward/backward at init) and diagnose.

    The model comes back exactly as it went in: parameters, gradients, buffers (BatchNorm
    running statistics), train/eval mode and the optimizer's state are restored.
    """
    from ..probe.probe import watch

    params = list(model.parameters())
    if not params:
        raise GradDoctorError(f"{type(model).__name__} has no parameters to diagnose")
    if steps < 0:
        raise GradDoctorError(f"steps must be >= 0, got {steps}")
    loss_fn = loss_fn or _default_loss
    saved = copy.deepcopy(model.state_dict())
    grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    opt_state = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    was_training = model.training
    opt = optimizer
    if steps > 0 and opt is None:
        opt = torch.optim.SGD([p for p in params if p.requires_grad], lr=0.01, momentum=0.9)
    try:
        model.train()
        with watch(model, every=every, stats="full") as probe:
            if opt is not None and steps > 0:
                probe.bind_optimizer(opt)
            for _ in range(max(steps, 1)):
                try:
                    loss = loss_fn(model(inputs), targets)
                except (RuntimeError, ValueError, TypeError) as exc:
                    raise GradDoctorError(f"the model failed on inputs of shape {tuple(inputs.shape)}: "
                                          f"{str(exc).splitlines()[0]}") from None
                for p in params:
                    p.grad = None
                loss.backward()
                if steps > 0 and torch.isfinite(loss):
                    opt.step()
                probe.step(loss)
        diagnosis = diagnose(probe.trace)
        if steps == 0:  # the theory's predictions at initialisation, beside the measurement
            from ..theory.streamstats import stream_evidence

            # graddoctor's own networks (mean field), and the gradient along a residual stream
            for key, evidence in (("theory", theory_evidence(model, diagnosis, inputs)),
                                  ("theory_stream", stream_evidence(probe.trace))):
                if evidence:
                    diagnosis.context[key] = evidence
        return diagnosis
    finally:
        with torch.no_grad():
            model.load_state_dict(saved)
        for p, g in zip(params, grads):
            p.grad = g
        if optimizer is not None:
            optimizer.load_state_dict(opt_state)
        model.train(was_training)
