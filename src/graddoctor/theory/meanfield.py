"""Mean-field signal propagation for wide random MLPs at initialisation.

Poole et al. (2016), "Exponential expressivity in deep neural networks through transient chaos";
Schoenholz et al. (2017), "Deep Information Propagation". With z ~ N(0, 1):

    q_{l+1} = sigma_w^2 E[phi(sqrt(q_l) z)^2] + sigma_b^2        (pre-activation variance)
    chi(q)  = sigma_w^2 E[phi'(sqrt(q) z)^2]                      (per-layer gain of ||delta||^2)

sigma_w^2 is Var(w) x fan_in. Pure functions of numbers; phi and phi' come from the activation
registry, evaluated on float64 tensors at the nodes of theory.quad. Vectorised over q.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import activations
from .. import init as init_mod
from .quad import NODES, Q_MAX, Q_MIN, gauss_expect

FP_ITER = 100  # fixed-point iterations before polishing by bisection
FP_TOL = 1e-14  # relative change that counts as converged
# |chi_1 - 1| below this is "critical": the gradient changes by less than a factor e in 1000 layers.
CRITICAL_TOL = 1e-3
EPS = np.finfo(np.float64).eps
# Default phase-diagram grid: from 'small' init (0.0256 at fan-in 256) past orthogonal tanh (2.8).
DIAGRAM_SIGMA_W2 = np.geomspace(1e-2, 1e1, 121)
DIAGRAM_SIGMA_B2 = np.linspace(0.0, 0.25, 51)


def _phi(activation: str, slope: float):
    act = activations.get(activation)
    return (lambda x: act.fn(x, slope)), (lambda x: act.deriv(x, slope))


def q_map(activation: str, q, sigma_w2, sigma_b2=0.0, negative_slope: float = 0.01) -> np.ndarray:
    """The next layer's pre-activation variance: sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2."""
    phi, _ = _phi(activation, negative_slope)
    return np.minimum(sigma_w2 * gauss_expect(lambda x: phi(x) ** 2, q) + sigma_b2, Q_MAX)


def chi(activation: str, q, sigma_w2, negative_slope: float = 0.01) -> np.ndarray:
    """Per-layer multiplier of the squared error-signal norm: sigma_w^2 E[phi'(sqrt(q) z)^2]."""
    _, dphi = _phi(activation, negative_slope)
    return sigma_w2 * gauss_expect(lambda x: dphi(x) ** 2, q)


def q_map_slope(activation: str, q, sigma_w2, negative_slope: float = 0.01) -> np.ndarray:
    """d q_{l+1} / d q_l = sigma_w^2 E[phi^2 (z^2 - 1)] / (2q) (Gaussian integration by parts)."""
    phi, _ = _phi(activation, negative_slope)
    q = np.clip(np.asarray(q, dtype=np.float64), Q_MIN, Q_MAX)
    z2 = torch.from_numpy((NODES**2 - 1) / 2)
    return sigma_w2 * gauss_expect(lambda x: phi(x) ** 2 * z2, q) / q


def fixed_point(activation: str, sigma_w2, sigma_b2=0.0, q0=1.0,
                negative_slope: float = 0.01) -> np.ndarray:
    """The q* that the q recursion reaches from q0 (inf when q grows without bound)."""
    sw2, sb2, q = (np.array(a, dtype=np.float64).ravel()
                   for a in np.broadcast_arrays(sigma_w2, sigma_b2, q0))
    shape = np.broadcast(sigma_w2, sigma_b2, q0).shape
    f = lambda x, i: q_map(activation, x, sw2[i], sb2[i], negative_slope)
    todo = np.arange(q.size)
    for _ in range(FP_ITER):  # q moves monotonically (F is increasing) towards its limit
        nxt = f(q[todo], todo)
        done = np.abs(nxt - q[todo]) <= FP_TOL * np.maximum(q[todo], Q_MIN)
        q[todo] = nxt
        todo = todo[~done]
        if not todo.size:
            break
    if todo.size:  # slow (near-critical) or unbounded
        phi, _ = _phi(activation, negative_slope)
        f0 = sw2[todo] * float(phi(torch.zeros((), dtype=torch.float64))) ** 2 + sb2[todo]
        q[todo] = _bisect(lambda x: f(x, todo), q[todo], f0)
    return np.where(q >= Q_MAX, np.inf, q).reshape(shape)


def _bisect(f, q: np.ndarray, f0: np.ndarray) -> np.ndarray:
    """The root of F(q) = q that iteration from q approaches: bracket and bisect (log scale)."""
    up = f(q) > q  # keep F(lo) >= lo (lo may be 0: F(0) >= 0) and F(hi) < hi
    lo, hi = np.where(up, q, 0.0), q.copy()
    for _ in range(40):  # grow hi until F(hi) < hi, or give up at Q_MAX (no fixed point)
        grow = up & (f(hi) >= hi) & (hi < Q_MAX)
        lo, hi = np.where(grow, hi, lo), np.where(grow, np.minimum(hi, Q_MAX / 1e10) * 1e10, hi)
    unbounded = up & (f(hi) >= hi)
    for _ in range(200):  # geometric midpoints: q* may be ~1e-30 or ~1e30
        mid = np.where(lo > 0, np.sqrt(lo) * np.sqrt(hi), hi / 2)
        below = f(mid) > mid * (1 + 4 * EPS)  # a tangent root (tanh at sigma_w^2 = 1) stays 0
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    q = np.where(lo > 0, np.sqrt(lo) * np.sqrt(hi), np.where(f0 > 0, hi, 0.0))
    return np.where(unbounded, np.inf, q)


def phase(chi1: float) -> str:
    """'ordered' (gradients vanish), 'critical' or 'chaotic' (gradients explode)."""
    if abs(chi1 - 1) <= CRITICAL_TOL:
        return "critical"
    return "ordered" if chi1 < 1 else "chaotic"


def depth_scale(multiplier: float) -> float:
    """Layers over which a per-layer multiplier changes a quantity by a factor e: 1/|ln m|."""
    m = abs(float(np.log(multiplier))) if multiplier > 0 else np.inf
    return np.inf if m < 1e3 * EPS else 1.0 / m  # m ~ 1e-16 is rounding, not a scale


@dataclass(frozen=True)
class MeanField:
    """The infinite-depth picture for one (activation, sigma_w^2, sigma_b^2)."""

    activation: str
    sigma_w2: float
    sigma_b2: float
    q_star: float  # fixed point of the variance recursion (inf: grows without bound)
    chi1: float  # gradient multiplier per layer at q*
    phase: str  # ordered | critical | chaotic
    xi_grad: float  # depth scale of the gradient, -1/ln chi1 in magnitude (inf at criticality)
    xi_q: float  # depth scale of q's approach to q* (inf: power law, e.g. tanh at sigma_w^2 = 1)


def mean_field(activation: str, sigma_w2: float, sigma_b2: float = 0.0, q0: float = 1.0,
               negative_slope: float = 0.01) -> MeanField:
    """q*, chi_1, phase and depth scales for one activation and weight/bias variance."""
    qs = float(fixed_point(activation, sigma_w2, sigma_b2, q0, negative_slope))
    c1 = float(chi(activation, qs, sigma_w2, negative_slope))
    slope = float(q_map_slope(activation, qs, sigma_w2, negative_slope))
    return MeanField(activation, float(sigma_w2), float(sigma_b2), qs, c1, phase(c1),
                     depth_scale(c1), depth_scale(slope) if np.isfinite(qs) else np.nan)


def q_trajectory(activation: str, q1: float, sigma_w2s, sigma_b2s,
                 negative_slope: float = 0.01) -> np.ndarray:
    """q_1, q_2, ...: q1 given, then q_{l+1} = q_map(q_l) with layer l+1's sigma_w^2, sigma_b^2."""
    qs = [float(q1)]
    for sw2, sb2 in zip(sigma_w2s, sigma_b2s):
        qs.append(float(q_map(activation, qs[-1], sw2, sb2, negative_slope)))
    return np.array(qs)


def phase_diagram(activation: str, sigma_w2s=None, sigma_b2s=None, q0: float = 1.0,
                  negative_slope: float = 0.01) -> dict:
    """chi_1 on a (sigma_b^2 x sigma_w^2) grid: {'sigma_w2', 'sigma_b2', 'chi1', 'q_star'}."""
    sigma_w2s = DIAGRAM_SIGMA_W2 if sigma_w2s is None else sigma_w2s
    sigma_b2s = DIAGRAM_SIGMA_B2 if sigma_b2s is None else sigma_b2s
    sw2, sb2 = np.meshgrid(np.asarray(sigma_w2s, float), np.asarray(sigma_b2s, float))
    qs = fixed_point(activation, sw2, sb2, q0, negative_slope)
    return {"activation": activation, "sigma_w2": sw2[0], "sigma_b2": sb2[:, 0],
            "chi1": chi(activation, qs, sw2, negative_slope), "q_star": qs}


def init_points(activation: str, width: int,
                negative_slope: float = 0.01) -> dict[str, tuple[float, float]]:
    """(sigma_w^2, sigma_b^2) of every registry init for a square width x width layer."""
    out = {}
    for name in init_mod.INITS:
        v = init_mod.variance(name, width, width, activation, negative_slope)
        if v.sigma_w2 is not None:
            out[name] = (float(v.sigma_w2), float(v.sigma_b2))
    return out
