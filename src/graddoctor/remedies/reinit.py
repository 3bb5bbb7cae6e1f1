"""reinit: He / Glorot / LeCun initialisation chosen by the activation each layer feeds, or orthogonal."""
from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from .. import activations, init
from ..data import Dataset
from ..diagnose.findings import Diagnosis
from ..errors import unknown
from .base import Change, Patient
from .surgery import PASS_THROUGH, WEIGHT_LAYERS, activation_after, leaves, weight_std

SCHEMES = ("by_activation", "orthogonal")
# The initialiser that keeps the signal's scale through each activation: He et al. (2015)
# for rectifiers and their smooth cousins, LeCun for SELU (Klambauer et al. 2017), Glorot &
# Bengio (2010) for sigmoid/tanh and for layers feeding no activation (e.g. the output layer).
BY_ACTIVATION = {"relu": "he_normal", "leaky_relu": "he_normal", "prelu": "he_normal",
                 "elu": "he_normal", "gelu": "he_normal", "silu": "he_normal", "selu": "lecun_normal"}
GLOROT = "xavier_normal"
# A layer whose weight std is already within this factor of the target's is left alone
# (it is initialised that way already; re-drawing it would change nothing but the noise).
STD_TOLERANCE = 1.25


def target_init(scheme: str, activation: str | None) -> str:
    """The initialiser a scheme picks for a layer feeding `activation`."""
    return BY_ACTIVATION.get(activation, GLOROT) if scheme == "by_activation" else "orthogonal"


def _initialise(layer: nn.Module, scheme: str, activation: str | None) -> str:
    """Re-initialise a Linear/Conv layer in place; returns the initialiser used."""
    name = target_init(scheme, activation)
    init.initialise(layer, name, activation or "identity")
    return name


# Dispatch table keyed by module class: how each layer type is re-initialised. Linear and
# ConvNd weights are (out, in, *kernel): torch's fan rules and graddoctor.init cover them.
# Policy for other layers that own parameters (Embedding, Bilinear, RNNs, ConvTranspose):
# left unchanged, with a note in the record; norm layers are kept as they are, silently.
REINIT: dict[type[nn.Module], Callable[[nn.Module, str, str | None], str]] = {
    cls: _initialise for cls in WEIGHT_LAYERS}


def rule_for(mod: nn.Module) -> Callable[[nn.Module, str, str | None], str] | None:
    """The REINIT rule for a module's class or its nearest base class (None: no rule)."""
    return next((REINIT[c] for c in type(mod).__mro__ if c in REINIT), None)


def _already(layer: nn.Module, name: str, activation: str | None) -> bool:
    """True when the layer's weight std already matches what `name` would give."""
    if name == "orthogonal":
        return False
    fan_in, fan_out = init.fans(layer.weight)
    want = math.sqrt(init.variance(name, fan_in, fan_out, activation or "identity").sigma_w2 / fan_in)
    have = float(layer.weight.detach().std())
    return want / STD_TOLERANCE <= have <= want * STD_TOLERANCE


class Reinit:
    """Re-initialise every Linear/Conv layer for the activation it feeds (or orthogonally)."""

    name = "reinit"

    def __init__(self, scheme: str = "by_activation") -> None:
        if scheme not in SCHEMES:
            raise unknown("reinit scheme", scheme, SCHEMES)
        self.scheme = scheme
        self.label = "reinit" if scheme == "by_activation" else f"reinit({scheme})"

    def _todo(self, model: nn.Module) -> list[tuple[str, str | None]]:
        after = activation_after(model)
        return [(p, a) for p, a in after.items()
                if not _already(model.get_submodule(p), target_init(self.scheme, a), a)]

    def applies_to(self, patient: Patient, diagnosis: Diagnosis | None = None,
                   data: Dataset | None = None) -> bool:
        """True when some layer is not initialised the way the scheme asks."""
        if patient.spec is not None:
            return patient.spec.init != target_init(self.scheme, patient.spec.activation)
        return bool(self._todo(patient.model))

    def apply(self, patient: Patient, data: Dataset | None = None) -> Patient:
        """Re-initialise the layers (weights drawn anew, biases zeroed); record std before/after."""
        if patient.spec is not None:
            s = patient.spec
            new = target_init(self.scheme, s.activation)
            return patient.with_(self.label, [Change("spec.init", s.init, new)], spec=s.with_(init=new))
        model = patient.surgery_copy()
        changes = []
        for path, act in self._todo(model):
            layer = model.get_submodule(path)
            before = f"weight {weight_std(layer)}"
            used = rule_for(layer)(layer, self.scheme, act)
            changes.append(Change(path, before, f"{used} ({weight_std(layer)})"))
        for path, mod in leaves(model):
            owns = any(True for _ in mod.parameters(recurse=False))
            skip = isinstance(mod, PASS_THROUGH) or activations.of_module(mod) is not None
            if owns and rule_for(mod) is None and not skip:
                changes.append(Change(path, type(mod).__name__, "unchanged",
                                      note=f"no re-initialisation rule for {type(mod).__name__}"))
        return patient.with_(self.label, changes, model=model)
