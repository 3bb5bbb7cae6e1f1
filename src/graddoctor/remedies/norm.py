"""add_norm: a normalisation layer between each weight layer and the activation it feeds.

The norm that fits the layer (Ioffe & Szegedy 2015; Ba et al. 2016): BatchNorm after a
convolution (over its channels) and after a Linear on (batch, features) rows, as in CNNs and
MLPs; LayerNorm after a Linear applied to sequences (batch, ..., features), as in
transformers. It goes wherever forward() puts the layer (a hook on the layer's output, its
child `gd_norm`: hooks.py), not only inside an nn.Sequential; layers whose output already
passes a norm before its activation are left alone.
"""
from __future__ import annotations

from torch import nn

from ..diagnose.findings import Diagnosis
from .base import Change, Patient, Sample
from .surgery import current
from .tracing import Flow, is_norm

# convolution -> (its BatchNorm, the rank of its batched output)
CONVS = {nn.Conv1d: ("BatchNorm1d", 3), nn.Conv2d: ("BatchNorm2d", 4), nn.Conv3d: ("BatchNorm3d", 5)}


def norm_for(layer: nn.Module, out_shape: tuple) -> tuple[str, dict] | None:
    """(class name, kwargs) of the norm that fits this layer's output; None if none does."""
    for cls, (bn, rank) in CONVS.items():
        if isinstance(layer, cls):
            return (bn, {"num_features": out_shape[1]}) if len(out_shape) == rank else None
    if len(out_shape) == 2:
        return "BatchNorm1d", {"num_features": out_shape[-1]}
    if len(out_shape) >= 3:
        return "LayerNorm", {"normalized_shape": out_shape[-1]}
    return None


def _points(flow: Flow) -> list[str]:
    """Weight layers that feed an activation with no norm in between, in forward order."""
    raw = {p for s in flow.sites for p in s.unnormed if s.activation != "identity"}
    return [p for p in flow.order if p in raw]


class AddNorm:
    """Put the fitting norm between each weight layer and its activation."""

    name = "add_norm"
    label = "add_norm"

    def why_not(self, patient: Patient, diagnosis: Diagnosis | None = None, sample: Sample | None = None) -> str:
        """'' when some layer feeds its activation unnormalised; else why not."""
        if patient.spec is not None:
            return "" if patient.spec.batchnorm == "none" else "the network has BatchNorm already"
        if sample is None:
            return "needs a sample batch to find the layers and their activations"
        net, flow = current(patient, sample)
        if not flow.sites:
            return "no activation between weight layers to normalise before"
        points = _points(flow)
        if not points:
            return "every layer that feeds an activation is normalised already"
        if not any(norm_for(net.get_submodule(p), flow.out_shape.get(p, ())) for p in points):
            return "no norm fits these layers' outputs"
        return ""

    def apply(self, patient: Patient, sample: Sample | None = None) -> Patient:
        """A network with the norms added (existing module names and state-dict keys unchanged)."""
        if patient.spec is not None:
            s = patient.spec
            return patient.with_(self.label, [Change("spec.batchnorm", s.batchnorm, "before_activation")],
                                 spec=s.with_(batchnorm="before_activation"))
        why = self.why_not(patient, None, sample)
        if why:
            return patient.with_(self.label, [Change("<model>", "norms", "unchanged", note=why)])
        net, flow = current(patient, sample)
        changes = []
        for path in _points(flow):
            layer, shape = net.get_submodule(path), flow.out_shape.get(path, ())
            fit = norm_for(layer, shape)
            if fit is None:
                changes.append(Change(path, type(layer).__name__, "unchanged",
                                      note=f"no norm fits an output of shape {shape}"))
                continue
            cls, kwargs = fit
            arg = next(iter(kwargs.values()))
            changes.append(Change(path, "no norm", f"{cls}({arg}) on its output", op="norm_after",
                                  args={"cls": cls, "kwargs": kwargs}))
        return patient.with_(self.label, changes)


# A norm layer's weight (gamma) is 1 at torch's init; one whose mean |weight| is this far below
# (or above) it rescales every normalised activation by that factor, layer after layer.
GAMMA_RANGE = (0.5, 2.0)


def _off_norms(net: nn.Module) -> list[tuple[str, float]]:
    """Norm layers whose weight is random-small or large (not all zero: zero-init is by design)."""
    out = []
    for path, mod in net.named_modules():
        w = getattr(mod, "weight", None)
        if is_norm(mod) and isinstance(w, nn.Parameter) and w.dim() == 1:
            m = float(w.detach().float().abs().mean())
            if bool(w.detach().abs().max() > 0) and not GAMMA_RANGE[0] <= m <= GAMMA_RANGE[1]:
                out.append((path, m))
    return out


class ResetNorms:
    """Norm weights back to 1 and biases to 0 (torch's init) where they start far from 1."""

    name = label = "reset_norms"

    def why_not(self, patient: Patient, diagnosis: Diagnosis | None = None, sample: Sample | None = None) -> str:
        """'' when some norm layer's weight starts far from 1 (and is not zero by design)."""
        if patient.spec is not None:
            return "a graddoctor network's norms start at 1"
        if sample is None:
            return "needs a sample batch"
        return "" if _off_norms(current(patient, sample)[0]) else "every norm weight starts near 1 (or at 0 by design)"

    def apply(self, patient: Patient, sample: Sample | None = None) -> Patient:
        """A Patient whose off norms start at weight 1, bias 0."""
        if why := self.why_not(patient, None, sample):
            return patient.with_(self.label, [Change("<model>", "norms", "unchanged", note=why)])
        net, changes = current(patient, sample)[0], []
        for path, m in _off_norms(net):
            changes.append(Change(path, f"weight mean |w| {m:.1g}", "1", op="fill",
                                  args={"param": "weight", "value": 1.0}))
            if getattr(net.get_submodule(path), "bias", None) is not None:
                changes.append(Change(path, "bias", "0", op="fill", args={"param": "bias", "value": 0.0}))
        return patient.with_(self.label, changes)
