"""reinit: He / Glorot / LeCun by the activation each layer feeds, orthogonal, or the library's own init.

"The activation a layer feeds" is read from the autograd graph of one forward (tracing.py):
the activation between this layer's output and the next layer's input, wherever forward()
applies it (a module, F.relu, torch.sigmoid), not the module defined after it.
`reinit(library)` re-runs the initialisation the model's library would give it (a Hugging Face
model's own `_init_weights`, torch's `reset_parameters` elsewhere): the repair for weights
scaled away from a known-good default.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import nn

from .. import activations, init
from ..diagnose.findings import Diagnosis
from ..errors import unknown
from .base import Change, Patient, Sample
from .surgery import PASS_THROUGH, current, leaves, weight_std

SCHEMES = ("by_activation", "orthogonal", "library")
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


def _torch_layer(layer: nn.Module, name: str, activation: str | None) -> None:
    init.initialise(layer, name, activation or "identity")


def _transposed(layer: nn.Module, name: str, activation: str | None) -> None:
    """Hugging Face's Conv1D keeps its weight as (in, out): initialise the (out, in) view."""
    init.initialise(SimpleNamespace(weight=layer.weight.t(), bias=getattr(layer, "bias", None)), name,
                    activation or "identity")


# Dispatch table keyed by module class: how each layer type is re-initialised. Linear and
# ConvNd weights are (out, in, *kernel): torch's fan rules and graddoctor.init cover them.
# Policy for other layers with a matrix (Embedding, Bilinear, RNNs, ConvTranspose): left
# unchanged, with a note in the record; norm layers are kept as they are, silently.
REINIT: dict[type[nn.Module], Callable[[nn.Module, str, str | None], None]] = {
    nn.Linear: _torch_layer, nn.Conv1d: _torch_layer, nn.Conv2d: _torch_layer, nn.Conv3d: _torch_layer}
BY_NAME = {"Conv1D": _transposed}  # classes of optional libraries, by name (transformers' Conv1D)


def rule_for(mod: nn.Module) -> Callable[[nn.Module, str, str | None], None] | None:
    """The REINIT rule for a module's class or its nearest base class (None: no rule)."""
    for c in type(mod).__mro__:
        if c in REINIT:
            return REINIT[c]
        if c.__name__ in BY_NAME:
            return BY_NAME[c.__name__]
    return None


@torch.no_grad()
def reinitialise(layer: nn.Module, name: str, activation: str | None) -> None:
    """Re-draw one layer's weight with initialiser `name` for `activation` (bias zeroed)."""
    rule = rule_for(layer)
    if rule is None:
        raise unknown("layer type to re-initialise", type(layer).__name__,
                      [c.__name__ for c in REINIT] + list(BY_NAME))
    rule(layer, name, activation)


def _fans(layer: nn.Module) -> tuple[int, int]:
    w = layer.weight.t() if rule_for(layer) is _transposed else layer.weight
    return init.fans(w)


def _already(layer: nn.Module, name: str, activation: str | None) -> bool:
    """True when the layer's weight std already matches what `name` would give."""
    if name == "orthogonal":
        return False
    fan_in, fan_out = _fans(layer)
    want = math.sqrt(init.variance(name, fan_in, fan_out, activation or "identity").sigma_w2 / fan_in)
    have = float(layer.weight.detach().float().std())
    return want / STD_TOLERANCE <= have <= want * STD_TOLERANCE


def _is_hf(mod: nn.Module) -> bool:
    return all(hasattr(mod, a) for a in ("init_weights", "_init_weights", "config"))


@torch.no_grad()
def library_init(model: nn.Module) -> None:
    """Re-run the library's initialisation: Hugging Face models' own, torch's reset_parameters elsewhere."""
    done: set[nn.Module] = set()
    for mod in model.modules():
        if mod in done:
            continue
        if _is_hf(mod):
            inner = list(mod.modules())
            for m in inner:
                m.__dict__.pop("_is_hf_initialized", None)
            for t in [*mod.parameters(), *mod.buffers()]:
                if hasattr(t, "_is_hf_initialized"):
                    delattr(t, "_is_hf_initialized")
            mod.init_weights()
            done.update(inner)
        elif hasattr(mod, "reset_parameters") and any(True for _ in mod.parameters(recurse=False)):
            mod.reset_parameters()
            done.add(mod)


def _library_differs(net: nn.Module) -> list[str]:
    """Layers whose weight std is off the library's init by more than STD_TOLERANCE."""
    fresh = copy.deepcopy(net)
    torch.manual_seed(0)
    library_init(fresh)
    mods = dict(fresh.named_modules())
    out = []
    for path, mod in net.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(w, nn.Parameter) and w.dim() >= 2 and path in mods:
            have, want = float(w.detach().float().std()), float(mods[path].weight.detach().float().std())
            if want > 0 and not want / STD_TOLERANCE <= have <= want * STD_TOLERANCE:
                out.append(path)
    return out


class Reinit:
    """Re-initialise the weight layers for the activation each feeds, orthogonally, or the library's way."""

    name = "reinit"

    def __init__(self, scheme: str = "by_activation") -> None:
        if scheme not in SCHEMES:
            raise unknown("reinit scheme", scheme, SCHEMES)
        self.scheme = scheme
        self.label = "reinit" if scheme == "by_activation" else f"reinit({scheme})"

    def _todo(self, patient: Patient, sample: Sample) -> tuple[nn.Module, list[tuple[str, str | None]]]:
        net, flow = current(patient, sample)
        todo = [(p, flow.feeds[p]) for p in flow.order
                if rule_for(m := net.get_submodule(p)) is not None
                and not _already(m, target_init(self.scheme, flow.feeds[p]), flow.feeds[p])]
        return net, todo

    def why_not(self, patient: Patient, diagnosis: Diagnosis | None = None, sample: Sample | None = None) -> str:
        """'' when some layer is not initialised the way the scheme asks; else why not."""
        if patient.spec is not None:
            if self.scheme == "library":
                return "a graddoctor network's init is its NetSpec's: the other reinit variants change it"
            new = target_init(self.scheme, patient.spec.activation)
            return "" if patient.spec.init != new else f"already initialised with {new}"
        if sample is None:
            return "needs a sample batch to find the layers and their activations"
        if self.scheme == "library":
            return "" if _library_differs(current(patient, sample)[0]) else \
                "the weights already have the scale of the library's own initialisation"
        net, todo = self._todo(patient, sample)
        if todo:
            return ""
        if not any(rule_for(m) for _, m in net.named_modules()):
            return "no layer this remedy knows how to re-initialise (Linear, Conv, Conv1D)"
        return "every layer already has the init of the activation it feeds"

    def apply(self, patient: Patient, sample: Sample | None = None) -> Patient:
        """Re-initialise the layers (weights drawn anew, biases zeroed); record std before/after."""
        if patient.spec is not None:
            s = patient.spec
            new = target_init(self.scheme, s.activation)
            return patient.with_(self.label, [Change("spec.init", s.init, new)], spec=s.with_(init=new))
        why = self.why_not(patient, None, sample)
        if why:
            return patient.with_(self.label, [Change("<model>", "init", "unchanged", note=why)])
        if self.scheme == "library":
            net = current(patient, sample)[0]
            changed = _library_differs(net)
            where = ", ".join(changed[:3]) + (f" (+{len(changed) - 3} more)" if len(changed) > 3 else "")
            return patient.with_(self.label, [Change("<model>", f"weights off the library's init: {where}",
                                                     "the library's own initialisation", op="library_init")])
        net, todo = self._todo(patient, sample)
        changes = []
        for path, act in todo:
            layer = net.get_submodule(path)
            name = target_init(self.scheme, act)
            what = f"{name} (feeds {act or 'no activation'})" if self.scheme == "by_activation" else name
            changes.append(Change(path, f"weight {weight_std(layer)}", what,
                                  op="reinit", args={"init": name, "activation": act}))
        for path, mod in leaves(net):
            skip = isinstance(mod, PASS_THROUGH) or activations.of_module(mod) is not None
            w = getattr(mod, "weight", None)
            if isinstance(w, nn.Parameter) and w.dim() >= 2 and rule_for(mod) is None and not skip:
                changes.append(Change(path, type(mod).__name__, "unchanged",
                                      note=f"no re-initialisation rule for {type(mod).__name__}"))
        return patient.with_(self.label, changes)
