"""swap_activation: sigmoid/tanh -> ReLU, Leaky ReLU, PReLU or SELU, with the matching init."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .. import activations, init
from ..data import Dataset
from ..diagnose.findings import Diagnosis
from ..errors import unknown
from .base import Change, Patient, run_forward, sample_input
from .surgery import activation_after, describe, leaves, set_module, weight_std

# The re-initialisation each target needs: He et al. (2015) for the ReLU family (keeps the
# signal's second moment through a rectifier), LeCun normal for SELU (Klambauer et al. 2017:
# self-normalisation assumes Var(w) = 1/fan_in).
MATCHING_INIT = {"relu": "he_normal", "leaky_relu": "he_normal", "prelu": "he_normal",
                 "selu": "lecun_normal"}
TARGETS = tuple(MATCHING_INIT)
SATURATING = frozenset(a.name for a in activations.ACTIVATIONS.values() if a.saturating)
# torch functions that apply a saturating activation; counted during one forward pass to
# find activations applied functionally (which have no module to swap).
_SATURATING_FUNCS = {torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, Tensor.sigmoid, Tensor.tanh,
                     torch.special.expit}


class _CountSaturating(TorchFunctionMode):
    """Counts calls of saturating torch functions during a forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _SATURATING_FUNCS:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def functional_saturating_calls(model: nn.Module, x: Tensor) -> int:
    """How many sigmoid/tanh calls one forward makes outside sigmoid/tanh modules."""
    module_calls = [0]
    hooks = [m.register_forward_pre_hook(lambda *_: module_calls.__setitem__(0, module_calls[0] + 1))
             for _, m in leaves(model) if (a := activations.of_module(m)) is not None and a.saturating]
    counter = _CountSaturating()
    try:
        with counter:
            run_forward(model, x)
    finally:
        for h in hooks:
            h.remove()
    return max(0, counter.calls - module_calls[0])




def replaceable(target: str) -> frozenset[str]:
    """Activations a target replaces: sigmoid/tanh always; plain ReLU too for targets without dead units."""
    return SATURATING | ({"relu"} if target in ("leaky_relu", "prelu", "selu") else set())


def _modules_to_swap(model: nn.Module, target: str) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in leaves(model)
            if (a := activations.of_module(m)) is not None and a.name in replaceable(target)]


class SwapActivation:
    """Replace sigmoid/tanh (and dead-prone ReLU) with the target; re-initialise the layers feeding it."""

    name = "swap_activation"

    def __init__(self, target: str = "relu") -> None:
        if target not in MATCHING_INIT:
            raise unknown("swap_activation target", target, TARGETS)
        self.target = target
        self.init = MATCHING_INIT[target]
        self.label = f"swap_activation({target})"

    def applies_to(self, patient: Patient, diagnosis: Diagnosis | None = None,
                   data: Dataset | None = None) -> bool:
        """True when the network has an activation to replace (modules, or functional sigmoid/tanh)."""
        if patient.spec is not None:
            return patient.spec.activation in replaceable(self.target)
        if _modules_to_swap(patient.model, self.target):
            return True
        x = sample_input(data)
        return x is not None and functional_saturating_calls(patient.model, x) > 0

    def apply(self, patient: Patient, data: Dataset | None = None) -> Patient:
        """Swap every sigmoid/tanh for the target and give the layers feeding it the matching init."""
        if patient.spec is not None:
            s = patient.spec
            changes = [Change("spec.activation", s.activation, self.target),
                       Change("spec.init", s.init, self.init)]
            return patient.with_(self.label, changes, spec=s.with_(activation=self.target, init=self.init))
        model = patient.surgery_copy()
        changes = []
        feeding = [p for p, a in activation_after(model).items() if a in replaceable(self.target)]
        for path, mod in _modules_to_swap(model, self.target):
            new = activations.get(self.target).module(0.01)
            ref = next(model.parameters(), None)
            if ref is not None:
                new = new.to(dtype=ref.dtype, device=ref.device)
            set_module(model, path, new)
            changes.append(Change(path, describe(mod), describe(new)))
        for path in feeding:  # only the layers whose activation was swapped
            layer = model.get_submodule(path)
            before = f"weight {weight_std(layer)}"
            init.initialise(layer, self.init, self.target)
            changes.append(Change(path, before, f"{self.init} ({weight_std(layer)})"))
        x = sample_input(data)
        n_func = functional_saturating_calls(model, x) if x is not None else 0
        if n_func:
            changes.append(Change("<forward>", f"{n_func} functional sigmoid/tanh call(s)", "unchanged",
                                  note="activations applied functionally (torch.sigmoid, F.tanh, x.tanh() "
                                       "in forward) cannot be swapped; use nn.Sigmoid/nn.Tanh modules "
                                       "or change forward() yourself"))
        return patient.with_(self.label, changes, model=model)
