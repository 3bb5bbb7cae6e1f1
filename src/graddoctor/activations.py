"""Activation registry: name -> module factory, function, derivative and saturation test.

One table serves the builder (which module to insert), the probe (how to tell a saturated
or dead unit from the activation's output), the diagnosis (which activations saturate),
the remedies (what to swap to) and the theory (phi and phi' at quadrature nodes).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .errors import unknown

# A unit is "saturated" when its activation derivative is below this fraction of the
# derivative's maximum (sigmoid: sigma' < 0.0025, i.e. |x| > 5.99, output outside
# [0.0025, 0.9975]; tanh: 1 - tanh^2 < 0.01, i.e. |x| > 2.99, |output| > 0.995).
SATURATION_FRACTION = 0.01


@dataclass(frozen=True)
class Activation:
    """What graddoctor knows about one activation function."""

    name: str
    module: Callable[[float], nn.Module]  # factory(negative_slope) -> module
    fn: Callable[[Tensor, float], Tensor]  # phi(x, slope)
    deriv: Callable[[Tensor, float], Tensor]  # phi'(x, slope)
    max_deriv: float  # sup |phi'| (for the saturation test)
    saturating: bool  # bounded output, derivative -> 0 at both ends (sigmoid, tanh)
    relu_family: bool  # piecewise linear with a kink at 0 (dead units possible)
    gain: str  # the name torch.nn.init.calculate_gain knows
    # phi' written as a function of the *output* y = phi(x); lets the probe test saturation
    # from what the next layer receives, even when the activation is applied functionally.
    deriv_from_output: Callable[[Tensor], Tensor] | None = None

    def saturated(self, y: Tensor) -> Tensor:
        """Boolean mask of saturated units, judged from the activation's output y."""
        if self.deriv_from_output is None:
            return torch.zeros_like(y, dtype=torch.bool)
        return self.deriv_from_output(y) < SATURATION_FRACTION * self.max_deriv


def _sigmoid_d(x: Tensor, _: float) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


def _tanh_d(x: Tensor, _: float) -> Tensor:
    return 1 - torch.tanh(x) ** 2


def _relu_d(x: Tensor, slope: float) -> Tensor:
    return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, slope))


def _elu_d(x: Tensor, _: float) -> Tensor:
    return torch.where(x > 0, torch.ones_like(x), torch.exp(x))


_SELU_A, _SELU_L = 1.6732632423543772, 1.0507009873554805


def _selu_d(x: Tensor, _: float) -> Tensor:
    return _SELU_L * torch.where(x > 0, torch.ones_like(x), _SELU_A * torch.exp(x))


def _gelu_d(x: Tensor, _: float) -> Tensor:
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return cdf + x * pdf


def _silu_d(x: Tensor, _: float) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("sigmoid", lambda s: nn.Sigmoid(), lambda x, s: torch.sigmoid(x), _sigmoid_d,
                   0.25, True, False, "sigmoid", lambda y: y * (1 - y)),
        Activation("tanh", lambda s: nn.Tanh(), lambda x, s: torch.tanh(x), _tanh_d,
                   1.0, True, False, "tanh", lambda y: 1 - y * y),
        Activation("relu", lambda s: nn.ReLU(), lambda x, s: F.relu(x), lambda x, s: _relu_d(x, 0.0),
                   1.0, False, True, "relu"),
        Activation("leaky_relu", lambda s: nn.LeakyReLU(s), lambda x, s: F.leaky_relu(x, s), _relu_d,
                   1.0, False, True, "leaky_relu"),
        # PReLU's slope is learnable; 0.25 is its initial value (He et al. 2015).
        Activation("prelu", lambda s: nn.PReLU(init=0.25), lambda x, s: F.leaky_relu(x, 0.25),
                   lambda x, s: _relu_d(x, 0.25), 1.0, False, True, "leaky_relu"),
        Activation("elu", lambda s: nn.ELU(), lambda x, s: F.elu(x), _elu_d,
                   1.0, False, False, "relu"),
        Activation("selu", lambda s: nn.SELU(), lambda x, s: F.selu(x), _selu_d,
                   _SELU_L * _SELU_A, False, False, "selu"),
        Activation("gelu", lambda s: nn.GELU(), lambda x, s: F.gelu(x), _gelu_d,
                   1.13, False, False, "relu"),
        Activation("silu", lambda s: nn.SiLU(), lambda x, s: F.silu(x), _silu_d,
                   1.1, False, False, "relu"),
        Activation("identity", lambda s: nn.Identity(), lambda x, s: x,
                   lambda x, s: torch.ones_like(x), 1.0, False, False, "linear"),
    ]
}

# Module class -> registry name, for recognising activations inside any user model.
MODULE_TO_ACTIVATION: dict[type[nn.Module], str] = {
    nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.ReLU: "relu", nn.ReLU6: "relu",
    nn.LeakyReLU: "leaky_relu", nn.PReLU: "prelu", nn.ELU: "elu", nn.SELU: "selu",
    nn.GELU: "gelu", nn.SiLU: "silu", nn.Identity: "identity",
}


def get(name: str) -> Activation:
    """Look an activation up by name, with a helpful error for unknown names."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise unknown("activation", name, ACTIVATIONS) from None


def of_module(module: nn.Module) -> Activation | None:
    """The registry entry for an activation module, or None if it is not one."""
    name = MODULE_TO_ACTIVATION.get(type(module))
    return ACTIVATIONS[name] if name else None


def init_gain(name: str, negative_slope: float = 0.01) -> float:
    """torch's recommended gain for an activation (used by orthogonal init)."""
    act = get(name)
    slope = 0.25 if name == "prelu" else negative_slope
    return nn.init.calculate_gain(act.gain, slope if act.gain == "leaky_relu" else None)
