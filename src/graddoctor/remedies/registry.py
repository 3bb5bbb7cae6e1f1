"""Every remedy variant by label, and which remedies answer which cause (ranked)."""
from __future__ import annotations

from ..errors import unknown
from .activation import TARGETS, SwapActivation
from .base import Remedy
from .batchnorm import AddBatchNorm
from .clipping import ClipGradients
from .inputs import NormalizeInputs
from .optimizer import MOVES, TuneOptimizer
from .reinit import SCHEMES, Reinit
from .residual import AddResidual

VARIANTS: tuple[Remedy, ...] = (
    *(SwapActivation(t) for t in TARGETS),
    *(Reinit(s) for s in SCHEMES),
    AddBatchNorm(),
    AddResidual(),
    *(TuneOptimizer(m) for m in MOVES),
    ClipGradients(),
    NormalizeInputs(),
)
REMEDIES: dict[str, Remedy] = {r.label: r for r in VARIANTS}
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(r.name for r in VARIANTS))

# Cause (graddoctor.diagnose.findings.CAUSES) -> remedy labels, most direct first. A family
# name stands for all its variants in registry order.
CAUSE_REMEDIES: dict[str, tuple[str, ...]] = {
    # sigmoid/tanh: phi' <= 1/4 (sigmoid) multiplies the signal down at every layer
    "saturating_activation": ("swap_activation", "add_batchnorm", "add_residual"),
    # the product of many per-layer factors: skips and normalisation keep it near 1
    "chain_product_depth": ("add_residual", "add_batchnorm", "reinit"),
    "init_too_small": ("reinit", "reinit(orthogonal)", "add_batchnorm"),
    "init_too_large": ("reinit", "add_batchnorm", "clip_gradients"),
    "learning_rate_too_high": ("tune_optimizer(lr/10)", "tune_optimizer(lr/100)", "clip_gradients"),
    "learning_rate_too_low": ("tune_optimizer(lr*10)", "tune_optimizer(momentum)"),
    # units that never fire: a slope below zero keeps their gradient alive
    "dead_relu": ("swap_activation(leaky_relu)", "swap_activation(prelu)", "reinit",
                  "tune_optimizer(lr/10)"),
    "input_scale": ("normalize_inputs", "add_batchnorm"),
}


def expand(name: str) -> list[Remedy]:
    """The variants a label or family name stands for."""
    if name in REMEDIES:
        return [REMEDIES[name]]
    found = [r for r in VARIANTS if r.name == name]
    if not found:
        raise unknown("remedy", name, list(REMEDIES) + [f for f in FAMILIES if f not in REMEDIES])
    return found


def get(label: str) -> Remedy:
    """One remedy variant by label, e.g. 'swap_activation(selu)' or 'add_batchnorm'."""
    if label not in REMEDIES:
        raise unknown("remedy", label, REMEDIES)
    return REMEDIES[label]
