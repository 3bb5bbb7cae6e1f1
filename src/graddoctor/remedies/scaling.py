"""Residual-branch scaling at init: what deep residual networks use to keep the stream bounded.

- scale_branches: each branch's output projection scaled to 1/sqrt(2 x blocks) of its block's
  other layers (GPT-2, Radford et al. 2019: "scale the weights of residual layers at
  initialization by 1/sqrt(N)", N residual layers);
- zero_init_norms: the last norm of each branch starts at zero, so every block starts as the
  identity (Goyal et al. 2017, "zero-gamma");
- layer_scale: a learnable per-channel factor on each branch output, initialised small
  (CaiT, Touvron et al. 2021: 0.1 up to depth 18, 1e-5 up to 24, 1e-6 deeper).
The branches and their exits are the diagnosis' structure of the network (branches.py).
"""
from __future__ import annotations

import math
import statistics

from torch import nn

from ..diagnose.findings import Diagnosis
from .base import Change, Patient, Sample
from .branches import residual_branches
from .reinit import STD_TOLERANCE
from .tracing import is_weight_layer


def _std(mod: nn.Module) -> float:
    return float(mod.weight.detach().float().std())


def layer_scale_init(blocks: int) -> float:
    """CaiT's initial LayerScale for a network of `blocks` residual blocks."""
    return 0.1 if blocks <= 18 else 1e-5 if blocks <= 24 else 1e-6


def _no_branches(patient: Patient, sample: Sample | None) -> str:
    if patient.spec is not None:
        return "a graddoctor network has no residual branches to scale (add_residual scales its own)"
    return "needs a sample batch to find the residual branches" if sample is None else ""


class ScaleBranches:
    """Output projections of residual branches scaled to 1/sqrt(2 x blocks) of their block's layers."""

    name = label = "scale_branches"

    def _todo(self, patient: Patient, sample: Sample) -> list[tuple[str, float, float]]:
        net, br = residual_branches(patient, sample)
        k = 1 / math.sqrt(2 * max(1, len(br.blocks)))
        out = []
        for block, exits in br.blocks.items():
            outs = {e.path for e in exits}
            others = [_std(m) for p, m in net.get_submodule(block).named_modules(prefix=block)
                      if is_weight_layer(m) and p not in outs]
            if not others:
                continue
            want = k * statistics.median(others)
            for e in exits:
                m = net.get_submodule(e.path)
                if is_weight_layer(m) and _std(m) > want * STD_TOLERANCE:
                    out.append((e.path, _std(m), want))
        return out

    def why_not(self, patient: Patient, diagnosis: Diagnosis | None = None, sample: Sample | None = None) -> str:
        """'' when some branch output projection is larger than 1/sqrt(2 x blocks) of its block's layers."""
        if why := _no_branches(patient, sample):
            return why
        if not residual_branches(patient, sample)[1].blocks:
            return "no repeated blocks with a residual branch"
        return "" if self._todo(patient, sample) else "the branch outputs are scaled down already (or are norms)"

    def apply(self, patient: Patient, sample: Sample | None = None) -> Patient:
        """A Patient whose branch output projections are scaled at init."""
        if why := self.why_not(patient, None, sample):
            return patient.with_(self.label, [Change("<model>", "branches", "unchanged", note=why)])
        changes = [Change(p, f"weight std {have:.1g}", f"std {want:.1g} (x{want / have:.2g})", op="scale_weight",
                          args={"factor": want / have}) for p, have, want in self._todo(patient, sample)]
        return patient.with_(self.label, changes)


class ZeroInitNorms:
    """The last norm of every residual branch starts at zero: each block starts as the identity."""

    name = label = "zero_init_norms"

    def _todo(self, patient: Patient, sample: Sample) -> list[str]:
        net, br = residual_branches(patient, sample)
        return [e.path for e in br.exits if e.norm and getattr(net.get_submodule(e.path), "weight", None) is not None
                and bool(net.get_submodule(e.path).weight.detach().abs().max() > 0)]

    def why_not(self, patient: Patient, diagnosis: Diagnosis | None = None, sample: Sample | None = None) -> str:
        """'' when some residual branch ends in a norm with a non-zero weight."""
        if why := _no_branches(patient, sample):
            return why
        if self._todo(patient, sample):
            return ""
        return "no residual branch ends in a norm layer" if not any(
            e.norm for e in residual_branches(patient, sample)[1].exits) else "the branch norms start at zero already"

    def apply(self, patient: Patient, sample: Sample | None = None) -> Patient:
        """A Patient whose branch-final norms have weight 0."""
        if why := self.why_not(patient, None, sample):
            return patient.with_(self.label, [Change("<model>", "branch norms", "unchanged", note=why)])
        return patient.with_(self.label, [Change(p, "norm weight", "0 (the block starts as the identity)", op="fill",
                                                 args={"param": "weight", "value": 0.0})
                                          for p in self._todo(patient, sample)])


class LayerScale:
    """A learnable per-channel factor on every residual branch output, initialised small (CaiT)."""

    name = label = "layer_scale"

    def why_not(self, patient: Patient, diagnosis: Diagnosis | None = None, sample: Sample | None = None) -> str:
        """'' when some residual branch has no LayerScale yet."""
        if why := _no_branches(patient, sample):
            return why
        br = residual_branches(patient, sample)[1]
        if not br.blocks:
            return "no repeated blocks with a residual branch"
        return "" if any(not e.scaled and e.channels for e in br.exits) else "the branches have a LayerScale already"

    def apply(self, patient: Patient, sample: Sample | None = None) -> Patient:
        """A Patient whose branch outputs are multiplied by gamma (channels,), gamma = layer_scale_init."""
        if why := self.why_not(patient, None, sample):
            return patient.with_(self.label, [Change("<model>", "branches", "unchanged", note=why)])
        br = residual_branches(patient, sample)[1]
        init = layer_scale_init(len(br.blocks))
        return patient.with_(self.label, [Change(e.path, "output", f"gamma * output, gamma ({e.channels},) = {init:g}",
                                                 op="layer_scale", args={"channels": e.channels, "dim": e.dim,
                                                                         "init": init})
                                          for e in br.exits if not e.scaled and e.channels])

