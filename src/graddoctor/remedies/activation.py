"""swap_activation: sigmoid/tanh -> ReLU, Leaky ReLU, PReLU or SELU, with the matching init.

Only activations are swapped: sigmoid/tanh whose output is a weight layer's input (as the
probe sees it, through grad_fn: tracing.py), as a module (replaced) or applied functionally
in forward() (torch.sigmoid, F.tanh, x.tanh(): substituted during the forward, hooks.py).
A sigmoid used as a gate (x * sigmoid(s)) or inside another function (GELU's tanh) is not one.
"""
from __future__ import annotations

from .. import activations
from ..diagnose.findings import Diagnosis
from ..errors import unknown
from . import hooks
from .base import Change, Patient, Sample
from .surgery import current, describe, weight_std
from .tracing import Site

# The re-initialisation each target needs: He et al. (2015) for the ReLU family (keeps the
# signal's second moment through a rectifier), LeCun normal for SELU (Klambauer et al. 2017:
# self-normalisation assumes Var(w) = 1/fan_in).
MATCHING_INIT = {"relu": "he_normal", "leaky_relu": "he_normal", "prelu": "he_normal",
                 "selu": "lecun_normal"}
TARGETS = tuple(MATCHING_INIT)
SATURATING = frozenset(a.name for a in activations.ACTIVATIONS.values() if a.saturating)
# The module each target becomes, as replay.MODULES names it, with its arguments.
TARGET_MODULE = {"relu": ("ReLU", {}), "leaky_relu": ("LeakyReLU", {"negative_slope": 0.01}),
                 "prelu": ("PReLU", {}), "selu": ("SELU", {})}


def replaceable(target: str) -> frozenset[str]:
    """Activations a target replaces: sigmoid/tanh always; plain ReLU too for targets without dead units."""
    return SATURATING | ({"relu"} if target in ("leaky_relu", "prelu", "selu") else set())


def _swappable(site: Site, target: str) -> bool:
    if site.activation not in replaceable(target):
        return False
    return site.module is not None or (site.producer is not None and target in hooks.SWAP_TO
                                       and site.activation in SATURATING)


class SwapActivation:
    """Replace sigmoid/tanh (and dead-prone ReLU) with the target; re-initialise the layers feeding it."""

    name = "swap_activation"

    def __init__(self, target: str = "relu") -> None:
        if target not in MATCHING_INIT:
            raise unknown("swap_activation target", target, TARGETS)
        self.target = target
        self.init = MATCHING_INIT[target]
        self.label = f"swap_activation({target})"

    def why_not(self, patient: Patient, diagnosis: Diagnosis | None = None, sample: Sample | None = None) -> str:
        """'' when some activation can be swapped for the target; else why not."""
        want = "/".join(sorted(replaceable(self.target)))
        if patient.spec is not None:
            a = patient.spec.activation
            return "" if a in replaceable(self.target) else f"the activation is {a}, not {want}"
        if sample is None:
            return "needs a sample batch to find the activations"
        _, flow = current(patient, sample)
        sites = [s for s in flow.sites if s.activation in replaceable(self.target)]
        if not sites:
            return f"no {want} activation feeds a layer (gates such as x * sigmoid(s) are not activations)"
        if any(_swappable(s, self.target) for s in sites):
            return ""
        if self.target not in hooks.SWAP_TO:
            return f"{self.target} needs a module; these activations are applied functionally in forward()"
        return ("the activations are applied in forward() to values that are not a module's output "
                "(e.g. torch.sigmoid(x @ w)): change forward() yourself")

    def apply(self, patient: Patient, sample: Sample | None = None) -> Patient:
        """Swap every such activation for the target and give the layers feeding it the matching init."""
        if patient.spec is not None:
            s = patient.spec
            changes = [Change("spec.activation", s.activation, self.target),
                       Change("spec.init", s.init, self.init)]
            return patient.with_(self.label, changes, spec=s.with_(activation=self.target, init=self.init))
        why = self.why_not(patient, None, sample)
        if why:
            return patient.with_(self.label, [Change("<model>", "activations", "unchanged", note=why)])
        net, flow = current(patient, sample)
        cls, kwargs = TARGET_MODULE[self.target]
        changes, feeding, skipped = [], [], 0
        for site in flow.sites:
            if not _swappable(site, self.target):
                skipped += site.activation in SATURATING
                continue
            if site.module is not None:
                changes.append(Change(site.module, describe(net.get_submodule(site.module)), f"{cls}()",
                                      op="set_module", args={"cls": cls, "kwargs": kwargs}))
            else:
                changes.append(Change(site.producer, f"{site.activation} of its output in forward()",
                                      self.target, op="function",
                                      args={"function": site.activation, "target": self.target}))
            feeding += [p for p in site.fed_by if p not in feeding]
        for path in feeding:  # only the layers whose activation was swapped
            layer = net.get_submodule(path)
            if getattr(layer, "weight", None) is None or layer.weight.dim() < 2 or not _has_rule(layer):
                continue
            changes.append(Change(path, f"weight {weight_std(layer)}", self.init, op="reinit",
                                  args={"init": self.init, "activation": self.target}))
        if skipped:
            changes.append(Change("<forward>", f"{skipped} sigmoid/tanh activation(s)", "unchanged",
                                  note="applied in forward() to values that are not a module's output"))
        return patient.with_(self.label, changes)


def _has_rule(layer) -> bool:
    from .reinit import rule_for

    return rule_for(layer) is not None
