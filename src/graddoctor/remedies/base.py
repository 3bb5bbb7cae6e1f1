"""The Remedy protocol, the Patient a remedy changes, and the record of what it changed.

A Patient bundles everything a remedy may change: the network (a graddoctor NetSpec, or the
user's own nn.Module used as a template), the training config and the input scaling. A
remedy never touches its input: it returns a new Patient whose `changes` end with its own
records. Model surgery always happens on a deep copy, so the user's model is never modified.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..diagnose.findings import Diagnosis
from ..errors import GradDoctorError
from ..nets import NetSpec, build
from ..training import TrainConfig


@dataclass(frozen=True)
class Change:
    """One thing a remedy changed: where, what it was, what it is now (and why, if not done)."""

    module_path: str  # qualified module name, or "spec.<field>", "config.<field>", "input"
    before: str
    after: str
    note: str = ""  # set when the remedy could not do what it wanted here (say why)

    def __str__(self) -> str:
        text = f"{self.module_path}: {self.before} -> {self.after}"
        return text + (f"  ({self.note})" if self.note else "")


class Standardize(nn.Module):
    """Wraps a model so it sees standardised inputs: model((x - mean) / std)."""

    def __init__(self, model: nn.Module, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


@dataclass(frozen=True)
class Patient:
    """What the remedies work on: network (spec or model template), config, input scaling."""

    config: TrainConfig
    spec: NetSpec | None = None  # a graddoctor network (remedies change its fields)
    model: nn.Module | None = None  # or a user's model: a template, never trained or modified
    input_stats: tuple[Tensor, Tensor] | None = None  # (mean, std) of the training inputs
    changes: tuple[Change, ...] = ()  # every change so far, in order
    applied: tuple[str, ...] = ()  # labels of the remedies applied so far

    def __post_init__(self) -> None:
        if (self.spec is None) == (self.model is None):
            raise GradDoctorError("a Patient needs exactly one of spec= (a NetSpec) or model= (an nn.Module)")

    def build(self, seed: int = 0) -> nn.Module:
        """A fresh trainable network: the spec built with `seed`, or a copy of the model."""
        net = build(self.spec, seed=seed) if self.spec is not None else copy.deepcopy(self.model)
        if self.input_stats is not None:
            net = Standardize(net, *self.input_stats)
        return net

    def with_(self, label: str, changes: list[Change], **fields) -> Patient:
        """A new Patient with some fields replaced and the remedy's changes recorded."""
        return replace(self, changes=self.changes + tuple(changes), applied=self.applied + (label,),
                       **fields)

    def surgery_copy(self) -> nn.Module:
        """A deep copy of the model template to operate on (the original stays untouched)."""
        if self.model is None:
            raise GradDoctorError("model surgery needs a Patient with model=; this one has a NetSpec")
        return copy.deepcopy(self.model)


@runtime_checkable
class Remedy(Protocol):
    """A remedy: a family `name`, a readable `label`, `applies_to` and `apply`."""

    name: str  # the family, as Finding.remedies names it: "swap_activation", ...
    label: str  # this variant: "swap_activation(selu)"

    def applies_to(self, patient: Patient, diagnosis: Diagnosis | None = None,
                   data: Dataset | None = None) -> bool:
        """True when apply() would change something."""
        ...

    def apply(self, patient: Patient, data: Dataset | None = None) -> Patient:
        """A new Patient with this remedy applied; records the changes (or why it could not)."""
        ...


def sample_input(data: Dataset | None, n: int = 8) -> Tensor | None:
    """A few training inputs for shape tracing (None without data)."""
    return None if data is None else data.x_train[:n]


def run_forward(model: nn.Module, x: Tensor) -> None:
    """One forward pass in eval mode without gradients (no BatchNorm statistics updated)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters(), None)
            model(x if p is None else x.to(dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
