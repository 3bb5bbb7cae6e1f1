"""Every remedy variant by label (which remedies answer which cause: graddoctor.diagnose.table)."""
from __future__ import annotations

from ..errors import unknown
from .activation import TARGETS, SwapActivation
from .base import Remedy
from .clipping import ClipGradients
from .inputs import NormalizeInputs
from .norm import AddNorm, ResetNorms
from .optimizer import MOVES, TuneOptimizer
from .precision import BFloat16, LossScale
from .reinit import SCHEMES, Reinit
from .residual import AddResidual
from .scaling import LayerScale, ScaleBranches, ZeroInitNorms
from .schedule import Warmup

# In surgery order: a pair is applied in this order (activation, init, norm, skips, training).
VARIANTS: tuple[Remedy, ...] = (
    BFloat16(),
    *(SwapActivation(t) for t in TARGETS),
    *(Reinit(s) for s in SCHEMES),
    ResetNorms(),
    ScaleBranches(),
    ZeroInitNorms(),
    LayerScale(),
    AddNorm(),
    AddResidual(),
    *(TuneOptimizer(m) for m in MOVES),
    Warmup(),
    ClipGradients(),
    LossScale(),
    NormalizeInputs(),
)
REMEDIES: dict[str, Remedy] = {r.label: r for r in VARIANTS}
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(r.name for r in VARIANTS))


def expand(name: str) -> list[Remedy]:
    """The variants a label or family name stands for."""
    if name in REMEDIES:
        return [REMEDIES[name]]
    found = [r for r in VARIANTS if r.name == name]
    if not found:
        raise unknown("remedy", name, list(REMEDIES) + [f for f in FAMILIES if f not in REMEDIES])
    return found


def get(label: str) -> Remedy:
    """One remedy variant by label, e.g. 'swap_activation(selu)' or 'add_norm'."""
    if label not in REMEDIES:
        raise unknown("remedy", label, REMEDIES)
    return REMEDIES[label]
