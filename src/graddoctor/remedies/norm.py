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
from .tracing import Flow

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
