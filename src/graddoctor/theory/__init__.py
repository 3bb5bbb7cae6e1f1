"""Mean-field signal propagation: predict the gradient's fate at initialisation.

predict: one entry point for every NetSpec family (plain, residual, BatchNorm, CNN);
meanfield: the q and chi recursions, fixed points, phases (wide random MLPs); plan: a NetSpec's
blocks and variances; stack: the walk over blocks (plain/residual MLPs and CNNs); meanmode:
residual MLPs at finite width; batchnorm: BN stacks; quad: the Gaussian expectations;
measure: the same ratio on real float64 networks. For real architectures (issue 20, point 4):
stream, the recursion along a residual stream, block by block; streampath, one path's gain from
the probe's forward statistics; streamstats.stream_evidence, the prediction beside the
measurement for a Trace (what `checkup` shows).
"""
from .meanfield import (
    CRITICAL_TOL,
    DIAGRAM_SIGMA_B2,
    DIAGRAM_SIGMA_W2,
    MeanField,
    chi,
    depth_scale,
    fixed_point,
    init_points,
    mean_field,
    phase,
    phase_diagram,
    q_map,
    q_map_slope,
    q_trajectory,
)
from .predict import BATCH, Prediction, family, not_applicable, predict
from .quad import gauss_expect

__all__ = [
    "BATCH", "CRITICAL_TOL", "DIAGRAM_SIGMA_B2", "DIAGRAM_SIGMA_W2", "MeanField", "Prediction", "chi",
    "depth_scale", "family", "fixed_point", "gauss_expect", "init_points", "mean_field", "not_applicable",
    "phase", "phase_diagram", "predict", "q_map", "q_map_slope", "q_trajectory",
]
