"""Mean-field signal propagation: predict the gradient's fate at initialisation.

meanfield: the q and chi recursions, fixed points, phases (wide random MLPs);
quad: the Gaussian expectations they need; measure: the same ratio on real float64 networks.
"""
from .meanfield import (
    CRITICAL_TOL,
    DIAGRAM_SIGMA_B2,
    DIAGRAM_SIGMA_W2,
    MeanField,
    Prediction,
    chi,
    depth_scale,
    fixed_point,
    init_points,
    mean_field,
    not_applicable,
    phase,
    phase_diagram,
    predict,
    q_map,
    q_map_slope,
    q_trajectory,
)
from .quad import gauss_expect

__all__ = [
    "CRITICAL_TOL", "DIAGRAM_SIGMA_B2", "DIAGRAM_SIGMA_W2", "MeanField", "Prediction", "chi",
    "depth_scale", "fixed_point", "gauss_expect", "init_points", "mean_field", "not_applicable",
    "phase", "phase_diagram", "predict", "q_map", "q_map_slope", "q_trajectory",
]
