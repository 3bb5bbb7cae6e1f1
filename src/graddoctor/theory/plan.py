"""What the theory needs to know about a NetSpec: its layers' variances, blocks and skips.

A network is a chain of blocks; a block is a branch of layers (linear or conv, then the
activation, with BatchNorm where the spec puts it) and a shortcut: none (a plain network is
one block without a shortcut), identity, or a projection (nets.py projects when the width
changes, in the first block). y = shortcut(x) + scale * branch(x), exactly as nets.build.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import init as init_mod
from ..nets import NetSpec

KERNEL = 3  # nets.py: 3x3 convolutions, padding 1 (zero padding)


@dataclass(frozen=True)
class LayerPlan:
    """One hidden layer: its module name and the variances its init gives it."""

    name: str  # qualified name of the linear/conv module, e.g. "body.3.branch.1.linear"
    sigma_w2: float | None  # Var(w) x fan-in (None: the init is not i.i.d.)
    sigma_b2: float  # Var(b) (0 without bias)


@dataclass(frozen=True)
class BlockPlan:
    """A branch of layers and the shortcut around it."""

    layers: tuple[LayerPlan, ...]
    shortcut: str  # "none" | "identity" | "projection"
    shortcut_sigma2: float  # Var(w) x fan-in of the projection (1 for identity, 0 for none)
    scale: float  # y = shortcut(x) + scale * branch(x)


def _variance(spec: NetSpec, name: str, n_in: int, n_out: int) -> tuple[float | None, float]:
    rf = KERNEL * KERNEL if spec.kind == "cnn" else 1  # torch counts conv fans x kernel size
    v = init_mod.variance(name, n_in * rf, n_out * rf, spec.activation, spec.negative_slope, rf)
    return v.sigma_w2, (v.sigma_b2 if spec.bias else 0.0)


def in_features(spec: NetSpec) -> int:
    """Input width of the first layer: features (mlp) or channels (cnn)."""
    return spec.in_shape[0] if spec.kind == "cnn" else int(np.prod(spec.in_shape))


def spatial(spec: NetSpec) -> tuple[int, ...]:
    """The per-unit map shape the theory tracks: () for an MLP, (H, W) for a CNN."""
    return tuple(spec.in_shape[1:]) if spec.kind == "cnn" else ()


def plan(spec: NetSpec) -> tuple[BlockPlan, ...]:
    """The blocks of the network nets.build(spec) makes, with each layer's variances."""
    n_in = in_features(spec)
    k = spec.residual or spec.depth
    blocks = []
    for b, start in enumerate(range(0, spec.depth, k)):
        layers = []
        for i in range(min(k, spec.depth - start)):
            fan = n_in if start + i == 0 else spec.width
            sw2, sb2 = _variance(spec, spec.init, fan, spec.width)
            name = f"body.{b}.branch.{i}.linear" if spec.residual else f"body.{start + i}.linear"
            layers.append(LayerPlan(name, sw2, sb2))
        if not spec.residual:
            shortcut, sp2, scale = "none", 0.0, 1.0
        elif b == 0 and n_in != spec.width:  # nets._shortcut: a bias-free 1x1 projection
            proj = "lecun_normal" if spec.init == "torch_default" else "xavier_normal"
            sp2 = init_mod.variance(proj, n_in, spec.width).sigma_w2
            shortcut, scale = "projection", spec.residual_scale
        else:
            shortcut, sp2, scale = "identity", 1.0, spec.residual_scale
        blocks.append(BlockPlan(tuple(layers), shortcut, float(sp2), float(scale)))
    return tuple(blocks)


def layer_names(blocks: tuple[BlockPlan, ...]) -> tuple[str, ...]:
    """Qualified names of every hidden linear/conv module, forward order."""
    return tuple(lay.name for blk in blocks for lay in blk.layers)


def mix(x: np.ndarray) -> np.ndarray:
    """A 3x3 zero-padded convolution's effect on per-position second moments: box sum / 9.

    Scalars (MLP) pass through. The box sum is symmetric, so it also carries gradients back.
    """
    if np.ndim(x) == 0:
        return x
    p = np.pad(x, 1)
    h, w = x.shape
    return sum(p[i:i + h, j:j + w] for i in range(KERNEL) for j in range(KERNEL)) / KERNEL**2
