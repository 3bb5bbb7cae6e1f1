"""Batch-normalised MLPs at initialisation (Yang et al. 2019, "A mean field theory of batch
normalization"): BatchNorm couples the B samples of a batch, so the state is B x B.

In the wide limit each unit's pre-activations across the batch are a Gaussian B-vector with
covariance K = s2 P + b J (P = I - J/B centres, J = 1 1^T; permutation symmetry keeps this
form), and the error signal's batch second moment is Pi = alpha I + beta J. BatchNorm (train
mode, eps as torch) maps u to u_hat = P u / sigma with sigma^2 = |P u|^2 / B + eps; its
Jacobian is (P - u_hat u_hat^T / B) / sigma = M / sigma. A layer h -> y is
phi(BN(h)) (before_activation) or BN(phi(h)) (after_activation); with d = phi' at the
activation's input and D = diag(d), its error signal maps back as

    before: Pi_h = E[M D Pi_y D M] / sigma^2        after: Pi_h = E[D M Pi_y M D] / sigma^2

Both need, per sample, tr(M^2 D^2) and |M d|^2, and the next layer sees
K_y = E[y y^T]. Expectations over the B-dimensional Gaussian are Monte Carlo (a fixed seed,
~2 million samples, cached); with eps -> 0 before_activation is scale-free and its per-layer
gain tends, as B grows, to E[phi'(z)^2] / Var[phi(z)] (ReLU: pi / (pi - 1) = 1.467 for
||delta||^2, 1.211 for ||delta||).
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from .. import activations
from ..errors import GradDoctorError
from .plan import BlockPlan
from .quad import gauss_expect

EPS = 1e-5  # torch.nn.BatchNorm1d's default, as nets.py builds it
MC_VALUES = 2**21  # Gaussian numbers drawn per (layer type, K): relative error ~1e-3
MC_SEED = 0
MIN_BATCH = 8  # below this 1/sigma^2 has heavy tails (the Monte Carlo would not settle)


@functools.lru_cache(maxsize=4096)
def layer(activation: str, placement: str, batch: int, s2: float, b: float,
          slope: float = 0.01, mc_values: int = MC_VALUES) -> tuple[np.ndarray, float, float, float]:
    """One BN layer at input covariance s2 P + b J: (T, s2_y, b_y, mean_y).

    T maps the error signal's (alpha, beta) at the layer output to those at h.
    """
    act = activations.get(activation)
    B, gen = batch, torch.Generator().manual_seed(MC_SEED)
    n = max(mc_values // B, 4096)
    tr = tot = m2 = m11 = m1 = 0.0
    for start in range(0, n, 8192):
        k = min(8192, n - start)
        g = torch.randn(k, B, generator=gen, dtype=torch.float64)
        c = torch.randn(k, 1, generator=gen, dtype=torch.float64)
        h = np.sqrt(s2) * (g - g.mean(1, keepdim=True)) + np.sqrt(b) * c
        u = h if placement == "before_activation" else act.fn(h, slope)
        pu = u - u.mean(1, keepdim=True)
        sigma2 = pu.square().mean(1, keepdim=True) + EPS
        uh = pu / sigma2.sqrt()
        d = act.deriv(uh if placement == "before_activation" else h, slope)
        y = act.fn(uh, slope) if placement == "before_activation" else uh
        kappa = 2 - uh.square().sum(1, keepdim=True) / B  # M^2 = P - kappa u_hat u_hat^T / B
        tr += float(((d.square() * (1 - 1 / B - kappa * uh.square() / B)).sum(1, keepdim=True) / sigma2).sum())
        md = (d.square().sum(1, keepdim=True) - d.sum(1, keepdim=True) ** 2 / B
              - kappa * (d * uh).sum(1, keepdim=True) ** 2 / B)
        tot += float((md / sigma2).sum())
        ys = y.sum(1)
        m2 += float(y.square().sum())
        m11 += float((ys.square() - y.square().sum(1)).sum())
        m1 += float(ys.sum())
    tr, tot, m2, m11, m1 = tr / n, tot / n, m2 / (n * B), m11 / (n * B * (B - 1)), m1 / (n * B)
    if placement == "before_activation":  # Pi_h = (alpha tr + beta tot) / (B - 1) P
        T = np.array([[tr, tot], [-tr / B, -tot / B]]) / (B - 1)
    else:  # Pi_h = alpha E[D M^2 D] / sigma^2: its diagonal mean tr/B, off-diagonal mean
        off = (tot - tr) / (B * (B - 1))
        T = np.array([[tr / B - off, 0.0], [off, 0.0]])
    return T, m2 - m11, max(m11 + (m2 - m11) / B, 0.0), m1  # K_y stays positive semi-definite


class BatchNormAlgebra:
    """The walk of stack.propagate for BN MLPs: x = (s2, b, mean) of the stream, g = (alpha, beta)."""

    def __init__(self, activation: str, slope: float, placement: str, batch: int,
                 input_var: float, mc_values: int = MC_VALUES) -> None:
        if batch < MIN_BATCH:
            raise GradDoctorError(f"the BatchNorm theory needs a batch of at least {MIN_BATCH}, got {batch}")
        self.activation, self.placement, self.slope = activation, placement, slope
        self.batch, self.input_var, self.mc_values = batch, input_var, mc_values

    def start(self) -> np.ndarray:
        return np.array([self.input_var, self.input_var / self.batch, 0.0])  # K = input_var I

    def linear(self, x: np.ndarray, sigma_w2: float, sigma_b2: float) -> tuple[float, float]:
        return float(sigma_w2 * x[0]), float(sigma_w2 * x[1] + sigma_b2)

    def layer(self, k: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        T, s2, b, mean = layer(self.activation, self.placement, self.batch, *k, self.slope, self.mc_values)
        return np.array([s2, b, mean]), T

    def shortcut(self, x: np.ndarray, blk: BlockPlan) -> np.ndarray:
        if blk.shortcut == "identity":
            return x
        return np.array([blk.shortcut_sigma2 * x[0], blk.shortcut_sigma2 * x[1], 0.0])

    def join(self, sc: np.ndarray, y: np.ndarray, a: float) -> np.ndarray:
        return np.array([sc[0] + a * a * y[0], sc[1] + a * a * y[1] + 2 * a * sc[2] * y[2],
                         sc[2] + a * y[2]])

    def top(self) -> np.ndarray:
        return np.array([1.0, 0.0])  # isotropic output gradient: Pi = I

    def back_layer(self, gy: np.ndarray, T: np.ndarray) -> np.ndarray:
        return T @ gy

    def back_linear(self, gh: np.ndarray, sigma_w2: float) -> np.ndarray:
        return sigma_w2 * gh

    def back_shortcut(self, g: np.ndarray, blk: BlockPlan) -> np.ndarray:
        return g * blk.shortcut_sigma2

    def size(self, g: np.ndarray) -> float:
        return float(self.batch * (g[0] + g[1]))  # tr(alpha I + beta J)


def gain(activation: str, placement: str, batch: int, sigma_w2: float = 2.0,
         sigma_b2: float = 0.0, slope: float = 0.01, mc_values: int = MC_VALUES) -> float:
    """Multiplier of ||delta||^2 per layer deep inside a plain BN stack (Yang et al.'s rate)."""
    alg = BatchNormAlgebra(activation, slope, placement, batch, 1.0, mc_values)
    x = alg.start()
    for _ in range(2):  # K reaches its fixed point after one layer; the second is that layer
        x, T = alg.layer(alg.linear(x, sigma_w2, sigma_b2))
    g = T @ np.array([1.0, 0.0])  # after one step Pi lies on the direction the map keeps
    return alg.size(T @ (sigma_w2 * g)) / alg.size(g)


def wide_batch_gain(activation: str, slope: float = 0.01) -> float:
    """The before_activation gain as the batch grows: E[phi'(z)^2] / Var[phi(z)], z ~ N(0, 1)."""
    act = activations.get(activation)
    e = lambda f: float(gauss_expect(f, 1.0))
    mean = e(lambda t: act.fn(t, slope))
    return e(lambda t: act.deriv(t, slope) ** 2) / (e(lambda t: act.fn(t, slope) ** 2) - mean**2)
