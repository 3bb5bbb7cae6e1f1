"""The numbers behind the residual and BatchNorm phase pictures (report/theory_figures.py draws them)."""
from __future__ import annotations

import math

import numpy as np

from ..nets import NetSpec
from . import batchnorm
from .plan import plan
from .predict import predict

RESIDUAL_DEPTHS = tuple(range(2, 61, 2))
RESIDUAL_SCALES = (1.0, 0.5, 0.2)  # fixed branch scales; 1/sqrt(blocks) is added per depth
BN_BATCHES = (8, 16, 32, 64, 128, 256, 1024)
BN_MC_VALUES = 2**18  # an eighth of the prediction's Monte Carlo: the curves, not the tables


def residual_picture(spec: NetSpec, input_var: float = 1.0) -> dict:
    """Predicted log10 ||delta_1||^2/||delta_L||^2 against depth for several branch scales.

    'wide' holds the wide-network limit (no mean mode) for contrast; NaN for CNNs (no contrast).
    """
    curves, wide = {}, {}
    for label in [f"a = {a:g}" for a in RESIDUAL_SCALES] + ["a = 1/sqrt(blocks)"]:
        preds = [predict(spec.with_(depth=d, residual_scale=(
            1 / math.sqrt(math.ceil(d / spec.residual)) if "sqrt" in label else float(label.split("= ")[1]))),
            input_var) for d in RESIDUAL_DEPTHS]
        curves[label] = np.array([p.log10_ratio for p in preds])
        wide[label] = np.array([p.contrast.get("wide limit", np.nan) for p in preds])
    return {"spec": spec.summary(), "depths": np.array(RESIDUAL_DEPTHS), "curves": curves, "wide": wide,
            "this": (spec.depth, predict(spec, input_var).log10_ratio)}


def batchnorm_picture(spec: NetSpec, batch: int) -> dict:
    """Per-layer gain of ||delta|| deep in a BN stack against batch size, both placements."""
    inner = plan(spec)[-1].layers[-1]
    gain = lambda place, b, n: math.sqrt(batchnorm.gain(spec.activation, place, b, inner.sigma_w2,
                                                        inner.sigma_b2, spec.negative_slope, n))
    curves = {place: np.array([gain(place, b, BN_MC_VALUES) for b in BN_BATCHES])
              for place in ("before_activation", "after_activation")}
    return {"activation": spec.activation, "batches": np.array(BN_BATCHES), "curves": curves,
            "limit": math.sqrt(batchnorm.wide_batch_gain(spec.activation, spec.negative_slope)),
            "this": (spec.batchnorm, batch, gain(spec.batchnorm, batch, batchnorm.MC_VALUES))}
