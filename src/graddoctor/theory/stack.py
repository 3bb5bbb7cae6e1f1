"""Mean-field propagation through blocks and skips: plain and residual MLPs and CNNs.

One walk over a plan (plan.py) serves every family; an *algebra* says what a layer does to
the forward statistics and to the backward second moment of the error signal. `Diagonal`
is the wide-network picture without BatchNorm (Poole et al. 2016; residual streams: Yang &
Schoenholz 2017; convolutions: Xiao et al. 2018) with per-unit maps: a scalar for an MLP, an
(H, W) array for a CNN, where a 3x3 zero-padded convolution averages the 9 neighbours
(`plan.mix`: fewer at the border). Per block, with scale a and branch output phi(h_k):

    forward   q_1 = sigma_w^2 mix(p) + sigma_b^2,  q_{i+1} = sigma_w^2 mix(E phi^2(q_i)) + sigma_b^2
              p' = p + a^2 E phi^2(q_k) + 2 a mu E phi(q_k),   mu' = mu + a E phi(q_k)
    backward  G_k = a^2 E phi'^2(q_k) G',  G_i = E phi'^2(q_i) sigma_w^2 mix(G_{i+1}),
              G = G' + sigma_w^2 mix(G_1)

p is the stream's mean square, mu its mean (ReLU branches add a positive mean, so the cross
term counts), G the squared error signal per unit. Cross terms between the skip and the branch
vanish in the backward pass (zero-mean weights, gradient independence).
"""
from __future__ import annotations

import numpy as np

from .. import activations
from .plan import BlockPlan, mix
from .quad import gauss_expect


def propagate(blocks: tuple[BlockPlan, ...], alg) -> np.ndarray:
    """log10 of the predicted ||delta_l||^2 for every hidden layer (forward order), up to a constant."""
    x, saved = alg.start(), []
    for blk in blocks:
        y, local = x, []
        for lay in blk.layers:
            y, loc = alg.layer(alg.linear(y, lay.sigma_w2, lay.sigma_b2))
            local.append(loc)
        saved.append(local)
        x = alg.join(alg.shortcut(x, blk), y, blk.scale)
    g, log_scale, out = alg.top(), 0.0, []  # g: the stream's error signal, x 10^log_scale
    for blk, local in zip(reversed(blocks), reversed(saved)):
        gy = g * blk.scale**2
        for lay, loc in zip(reversed(blk.layers), reversed(local)):
            gh = alg.back_layer(gy, loc)
            size = alg.size(gh)  # renormalise every step: the ratios reach 1e-300
            log_scale += np.log10(size)
            out.append(log_scale)
            gy = alg.back_linear(gh / size, lay.sigma_w2)
            g = g / size if blk.shortcut != "none" else g
        g = gy if blk.shortcut == "none" else alg.back_shortcut(g, blk) + gy
    return np.array(out[::-1])


class Diagonal:
    """Per-unit second moments without BatchNorm; x = (mean square p, mean mu) maps, G maps."""

    def __init__(self, activation: str, slope: float, shape: tuple[int, ...], input_var: float) -> None:
        act = activations.get(activation)
        self.phi, self.dphi = (lambda t: act.fn(t, slope)), (lambda t: act.deriv(t, slope))
        self.shape, self.input_var = shape, input_var

    def start(self) -> np.ndarray:
        return np.stack([np.full(self.shape, self.input_var), np.zeros(self.shape)])

    def linear(self, x: np.ndarray, sigma_w2: float, sigma_b2: float) -> np.ndarray:
        return sigma_w2 * mix(x[0]) + sigma_b2  # q, the pre-activation variance map

    def layer(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.stack([gauss_expect(lambda t: self.phi(t) ** 2, q), gauss_expect(self.phi, q)])
        return out, gauss_expect(lambda t: self.dphi(t) ** 2, q)

    def shortcut(self, x: np.ndarray, blk: BlockPlan) -> np.ndarray:
        if blk.shortcut == "identity":
            return x
        return np.stack([blk.shortcut_sigma2 * x[0], np.zeros(self.shape)])  # 1x1: no mixing

    def join(self, sc: np.ndarray, y: np.ndarray, a: float) -> np.ndarray:
        return np.stack([sc[0] + a * a * y[0] + 2 * a * sc[1] * y[1], sc[1] + a * y[1]])

    def top(self) -> np.ndarray:
        return np.ones(self.shape)  # isotropic output gradient (a CNN's average pool: uniform)

    def back_layer(self, gy: np.ndarray, dphi2: np.ndarray) -> np.ndarray:
        return dphi2 * gy

    def back_linear(self, gh: np.ndarray, sigma_w2: float) -> np.ndarray:
        return sigma_w2 * mix(gh)

    def back_shortcut(self, g: np.ndarray, blk: BlockPlan) -> np.ndarray:
        return g * blk.shortcut_sigma2

    def size(self, g: np.ndarray) -> float:
        return float(np.sum(g))
