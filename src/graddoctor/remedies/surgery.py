"""Helpers for reading and describing nn.Module trees, and the one-forward Flow of a patient.

Pure tree reading on a model the caller owns (the remedies look at patient.build() copies).
"""
from __future__ import annotations

from torch import nn

from .base import Patient, Sample
from .tracing import Flow, trace_flow

# Modules that sit between a weight layer and its activation without changing which
# activation the layer feeds, and own no matrix: kept as they are by reinit.
PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
_CACHE: dict[tuple, tuple[Patient, Sample, nn.Module, Flow]] = {}
CACHE_SIZE = 8  # patients whose network and Flow are kept (each remedy variant asks again)


def leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every leaf module, in definition order."""
    return [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]


def current(patient: Patient, sample: Sample) -> tuple[nn.Module, Flow]:
    """The patient's network as built (seed 0) and what one forward of the sample shows (cached)."""
    key = (id(patient.model), id(patient.spec), patient.changes, id(sample))
    hit = _CACHE.get(key)
    if hit is not None and hit[0].model is patient.model and hit[1] is sample:
        return hit[2], hit[3]
    net = patient.build(0)
    flow = trace_flow(net, sample)
    if len(_CACHE) >= CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = (patient, sample, net, flow)
    return net, flow


def describe(mod: nn.Module) -> str:
    """Short text for a module in a Change record: its repr on one line."""
    return " ".join(repr(mod).split())


def weight_std(layer: nn.Module) -> str:
    """'std 0.1': a layer's weight std for a Change record (1 digit, so similar edits merge)."""
    return f"std {float(layer.weight.detach().float().std()):.1g}"
