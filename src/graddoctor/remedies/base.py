"""The Remedy protocol, the Patient a remedy changes, the Sample it looks at, and its Change records.

A Patient bundles everything a remedy may change: the network (a graddoctor NetSpec, or the
user's own nn.Module used as a template), the training config (graddoctor's own loop) and the
step settings (learning-rate scale, warmup, clipping, loss scaling: applied around the user's
own step). A remedy never touches its input: it returns a new Patient whose `changes` end with
its own records. Model surgery always happens on a deep copy, so the user's model is never
modified. Every Change that alters the network carries `op` and `args`, enough for
`apply_changes` to replay it on a fresh instance of the user's class (replay.py).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..diagnose.findings import Diagnosis
from ..errors import GradDoctorError
from ..nets import NetSpec, build
from ..training import TrainConfig

# Where a change lives: "model" (replayed by apply_changes), "training" (the user's loop: lr,
# warmup, clipping, loss scaling) or "input" (the data the model sees).
SCOPES = ("model", "training", "input")


@dataclass(frozen=True)
class Change:
    """One thing a remedy changed: where, what it was, what it is now (and why, if not done).

    `op` and `args` say how to do it again (replay.REPLAY); op "" is a record only (a
    training-loop setting, or a change that could not be made: then `note` says why).
    """

    module_path: str  # qualified module name, or "spec.<field>", "config.<field>", "step.<setting>"
    before: str
    after: str
    note: str = ""  # set when the remedy could not do what it wanted here (say why)
    op: str = ""  # replay operation (replay.REPLAY), "" for none
    args: dict = field(default_factory=dict, compare=False)  # JSON-able arguments of the op

    @property
    def scope(self) -> str:
        """'training' for loop settings, 'input' for the data, else 'model'."""
        if self.module_path.startswith(("step.", "config.")):
            return "training"
        return "input" if self.module_path == "input" else "model"

    def __str__(self) -> str:
        text = f"{self.module_path}: {self.before} -> {self.after}"
        return text + (f"  ({self.note})" if self.note else "")

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Change:
        """The Change a to_dict() wrote (unknown keys are an error)."""
        try:
            return cls(**d)
        except TypeError as exc:
            raise GradDoctorError(f"not a graddoctor change record: {d!r} ({exc})") from None


@dataclass(frozen=True)
class StepSettings:
    """How each optimizer step is taken around the user's own step (what loop.py applies)."""

    lr_scale: float = 1.0  # every parameter group's learning rate multiplied by this
    warmup_steps: int = 0  # the learning rate ramps linearly over the first steps (0: none)
    clip_norm: float | None = None  # clip the global gradient norm to this
    loss_scale: bool = False  # dynamic loss scaling (fp16 gradients that would underflow)


@dataclass(frozen=True)
class Patient:
    """What the remedies work on: network (spec or model template), config, step settings.

    A model patient keeps the user's untreated model as a template plus the list of changes:
    `build()` is a copy of the template with the changes replayed (replay.apply_changes), so
    every candidate is built exactly the way the user will rebuild the winner.
    """

    config: TrainConfig  # graddoctor's optimizer settings (used when the user gave no make_optimizer)
    spec: NetSpec | None = None  # a graddoctor network (remedies change its fields)
    model: nn.Module | None = None  # or a user's model: a template, never trained or modified
    settings: StepSettings = StepSettings()
    own_optimizer: bool = False  # the user's make_optimizer: lr moves scale it (settings), not config
    changes: tuple[Change, ...] = ()  # every change so far, in order
    applied: tuple[str, ...] = ()  # labels of the remedies applied so far

    def __post_init__(self) -> None:
        if (self.spec is None) == (self.model is None):
            raise GradDoctorError("a Patient needs exactly one of spec= (a NetSpec) or model= (an nn.Module)")

    def build(self, seed: int = 0) -> nn.Module:
        """A fresh trainable network: the spec built (or the model copied), then the changes replayed."""
        from .replay import apply_changes

        net = build(self.spec, seed=seed) if self.spec is not None else copy.deepcopy(self.model)
        torch.manual_seed(seed)  # re-initialisations among the changes draw the same weights
        return apply_changes(net, self.changes)

    def with_(self, label: str, changes: list[Change], **fields) -> Patient:
        """A new Patient with some fields replaced and the remedy's changes recorded."""
        return replace(self, changes=self.changes + tuple(changes), applied=self.applied + (label,),
                       **fields)

    def with_settings(self, label: str, change: Change, **settings) -> Patient:
        """A new Patient whose step settings differ (one Change records it)."""
        return self.with_(label, [change], settings=replace(self.settings, **settings))

    def step_settings(self) -> StepSettings:
        """The settings the loop applies (graddoctor's own optimizer: clipping from its config)."""
        if self.own_optimizer or self.settings.clip_norm is not None:
            return self.settings
        return replace(self.settings, clip_norm=self.config.clip_norm)


@dataclass(frozen=True)
class Sample:
    """One training batch and the step that runs the model on it: what remedies trace shapes with."""

    batch: object  # as the data yields it: a tuple, a dict, a tensor
    step: Callable[[nn.Module, object], Tensor]  # (model, batch) -> loss: the user's forward + loss
    dataset: Dataset | None = None  # the in-memory data set, when there is one (input statistics)
    budget_steps: int = 0  # optimizer steps each candidate trains (warmup is a fraction of it)
    structure: object | None = None  # diagnose.structure.Structure of the untreated run (treat() sets it)

    def run(self, model: nn.Module) -> Tensor:
        """The loss of one forward in eval mode, autograd on (grad_fn readable); the mode is restored."""
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                return self.step(model, self.batch)
        finally:
            model.train(was_training)


@runtime_checkable
class Remedy(Protocol):
    """A remedy: a family `name`, a readable `label`, `why_not` and `apply`."""

    name: str  # the family, as Finding.remedies names it: "swap_activation", ...
    label: str  # this variant: "swap_activation(selu)"

    def why_not(self, patient: Patient, diagnosis: Diagnosis | None = None,
                sample: Sample | None = None) -> str:
        """Why apply() would change nothing here ("" when it applies)."""
        ...

    def apply(self, patient: Patient, sample: Sample | None = None) -> Patient:
        """A new Patient with this remedy applied; records the changes (or why it could not)."""
        ...


def applies(remedy: Remedy, patient: Patient, diagnosis: Diagnosis | None = None,
            sample: Sample | None = None) -> bool:
    """True when the remedy would change something."""
    return not remedy.why_not(patient, diagnosis, sample)


def run_forward(model: nn.Module, sample: Sample) -> None:
    """One forward pass of the sample in eval mode without gradients (no norm statistics updated)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            sample.step(model, sample.batch)
    finally:
        model.train(was_training)


def with_hooks(model: nn.Module, register: Callable[[nn.Module], list], fn: Callable[[], object]) -> object:
    """Run fn() with temporary hooks (register(model) returns their handles); always removes them."""
    handles = register(model)
    try:
        return fn()
    finally:
        for h in handles:
            h.remove()
