"""Initialiser registry: name -> function that (re)initialises one Linear or Conv layer.

Every initialiser also reports the weight variance times fan-in (sigma_w^2) and the bias
variance (sigma_b^2) it produces, which is what the mean-field theory needs.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from . import activations
from .errors import unknown

INITS = (
    "torch_default", "small", "large", "xavier_uniform", "xavier_normal",
    "he_uniform", "he_normal", "lecun_normal", "orthogonal",
)
SMALL_STD = 0.01  # N(0, 0.01^2): the classic bad initialisation
LARGE_STD = 1.0  # N(0, 1)


@dataclass(frozen=True)
class InitVariance:
    """Weight variance x fan-in and bias variance an initialiser produces (None: not i.i.d.)."""

    sigma_w2: float | None
    sigma_b2: float


def fans(weight: Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear or Conv weight."""
    return nn.init._calculate_fan_in_and_fan_out(weight)


def he_gain(activation: str, negative_slope: float = 0.01) -> float:
    """He et al. (2015) gain: sqrt(2 / (1 + a^2)) for the ReLU family, sqrt(2) otherwise."""
    slope = {"leaky_relu": negative_slope, "prelu": 0.25}.get(activation, 0.0)
    return math.sqrt(2.0 / (1.0 + slope**2))


def initialise(layer: nn.Module, name: str, activation: str = "relu",
               negative_slope: float = 0.01) -> None:
    """Re-initialise the weight (and zero the bias) of one Linear/Conv layer in place."""
    if name not in INITS:
        raise unknown("init", name, INITS)
    if name == "torch_default":
        layer.reset_parameters()
        return
    w = layer.weight
    fan_in, _fan_out = fans(w)
    fn: Callable[[], object] = {
        "small": lambda: nn.init.normal_(w, 0.0, SMALL_STD),
        "large": lambda: nn.init.normal_(w, 0.0, LARGE_STD),
        # Glorot & Bengio (2010) as published: gain 1, var = 2 / (fan_in + fan_out).
        "xavier_uniform": lambda: nn.init.xavier_uniform_(w),
        "xavier_normal": lambda: nn.init.xavier_normal_(w),
        # He et al. (2015): var = gain^2 / fan_in with the activation's ReLU-family gain.
        "he_uniform": lambda: nn.init.uniform_(
            w, -he_gain(activation, negative_slope) * math.sqrt(3.0 / fan_in),
            he_gain(activation, negative_slope) * math.sqrt(3.0 / fan_in)),
        "he_normal": lambda: nn.init.normal_(w, 0.0, he_gain(activation, negative_slope)
                                             / math.sqrt(fan_in)),
        "lecun_normal": lambda: nn.init.normal_(w, 0.0, 1.0 / math.sqrt(fan_in)),
        "orthogonal": lambda: nn.init.orthogonal_(
            w, gain=activations.init_gain(activation, negative_slope)),
    }[name]
    fn()
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


def variance(name: str, fan_in: int, fan_out: int, activation: str = "relu",
             negative_slope: float = 0.01, receptive_field: int = 1) -> InitVariance:
    """sigma_w^2 (= Var(w) * fan_in) and sigma_b^2 for an initialiser and layer shape.

    fan_in/fan_out as torch counts them (conv: channels x kernel size); `receptive_field`
    (conv: kernel h x w) is needed only for orthogonal init of non-square conv weights.
    """
    if name not in INITS:
        raise unknown("init", name, INITS)
    if name == "torch_default":
        # kaiming_uniform_(a=sqrt(5)): Var(w) = 1 / (3 fan_in); bias U(+-1/sqrt(fan_in)).
        return InitVariance(1.0 / 3.0, 1.0 / (3.0 * fan_in))
    g = he_gain(activation, negative_slope)
    sw2 = {
        "small": SMALL_STD**2 * fan_in,
        "large": LARGE_STD**2 * fan_in,
        "xavier_uniform": 2.0 * fan_in / (fan_in + fan_out),
        "xavier_normal": 2.0 * fan_in / (fan_in + fan_out),
        "he_uniform": g**2,
        "he_normal": g**2,
        "lecun_normal": 1.0,
        # W (rows x fan_in, rows = out channels) scaled by gain has min(rows, fan_in) singular
        # values equal to gain: sum W^2 = gain^2 min(rows, fan_in) -> Var(w) fan_in below
        "orthogonal": activations.init_gain(activation, negative_slope) ** 2
        * min(1.0, fan_in / (fan_out // receptive_field)),
    }[name]
    return InitVariance(sw2, 0.0)
