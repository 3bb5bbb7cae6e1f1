"""Residual MLPs at finite width: the gradient's mean mode, which the wide-network limit misses.

When a branch ends in an activation with a non-zero mean (ReLU), the stream x accumulates a
mean mu along the all-ones direction 1, every branch's first layer sees h = W x = mu W1 + ...,
and its units switch on together with the row sums of W. The error signal's component along
1 then feeds back on itself through the skip, faster than the rest of the gradient grows.
It starts at 1/width (the share of an isotropic vector along any direction) and overtakes
the rest after ~20 blocks of a 256-wide ReLU stack with branch scale 1, where the wide limit
(stack.Diagonal) falls short by 6 decades at depth 50. Here the stream's error signal is
g = gamma 1 + xi x + rest, and Stein's lemma (E[w f(w.x)] = Var(w) x E[f'], weights
independent of everything but their own layer) gives the systematic parts a layer adds:

    W^T (phi'(h) * 1)        ~ sigma_w^2 E[phi''(h)] y               (y: the layer's input)
    W^T (phi'(h) * phi(h))   ~ sigma_w^2 E[(phi phi')'(h)] y
    W^T (phi'(h) * v)        ~ sigma_w^2 E[phi''(h)] mean(v) y       (v independent of h)

so (gamma, xi) follow a 2 x 2 linear map per block, while the rest follows the wide-limit
recursion. E[phi''] = E[h phi'(h)] / q and E[(phi phi')'] = E[h phi phi'] / q (Stein again),
so only phi and phi' from the registry are needed. Second moments: S = Cov(gamma, xi).

Each block's random part seeds (gamma, xi) with its projection on span{1, x}, 1/width of its
energy along x's complement 1 - (mu / p) x. Along x itself there is a conservation law: for a
block x_out = x + a f(x), g_in . x = g_out . x_out - a g_out . D exactly, with Euler's defect D
= f(x) - J_f x, which is 0 when f is positively homogeneous (ReLU, leaky ReLU without bias: J_f
x = f(x), Euler's theorem for homogeneous functions; the identity behind the layer balance of
Du, Hu & Lee 2018, "Algorithmic regularization in learning deep homogeneous models: layers are
automatically balanced"). A random part orthogonal to x_out therefore reaches x only through
the defect: a^2 E[D^2] / (p width) of its energy, with D_i = d_i + phi'(h_i) W_i D_(i-1) layer
by layer, d = phi(h) - phi'(h)(h - b). Seeding x with 1/width of every random part (the
isotropic share) overcounts this direction, in which the mean mode grows; at branch scale 1
that overshot ReLU stacks by 0.4-0.5 decades.
"""
from __future__ import annotations

import numpy as np

from .. import activations
from .plan import BlockPlan
from .quad import gauss_expect

BIAS_NODES = 24  # Gauss-Hermite nodes over a layer's bias in Euler's defect


class _Moments:
    """Gaussian expectations of one layer at pre-activation variance q."""

    def __init__(self, phi, dphi, q: float, sb2: float) -> None:
        e = lambda f: float(gauss_expect(f, q))
        self.q = q
        self.f1, self.f2 = e(phi), e(lambda t: phi(t) ** 2)  # E phi, E phi^2
        self.d2 = e(lambda t: dphi(t) ** 2)  # E phi'^2
        self.d2f, self.d2f2 = e(lambda t: dphi(t) ** 2 * phi(t)), e(lambda t: (dphi(t) * phi(t)) ** 2)
        self.dd = e(lambda t: t * dphi(t)) / q  # E phi''
        self.dff = e(lambda t: t * dphi(t) * phi(t)) / q  # E (phi phi')'
        # Euler's defect d = phi(h) - phi'(h) (h - b), h = z + b: its mean and mean square
        b, wb = np.polynomial.hermite_e.hermegauss(BIAS_NODES if sb2 > 0 else 1)
        b, wb, qz = b * np.sqrt(sb2), wb / wb.sum(), q - sb2
        ez = lambda f: sum(w * float(gauss_expect(lambda z, c=c: f(z + c, z), qz)) for c, w in zip(b, wb))
        self.euler1 = ez(lambda t, z: phi(t) - dphi(t) * z)
        self.euler2 = ez(lambda t, z: (phi(t) - dphi(t) * z) ** 2)


def profile(blocks: tuple[BlockPlan, ...], activation: str, slope: float, width: int,
            input_var: float = 1.0) -> np.ndarray:
    """log10 ||delta_l||^2 per hidden layer (forward order, up to a constant) of a residual MLP."""
    act = activations.get(activation)
    phi, dphi = (lambda t: act.fn(t, slope)), (lambda t: act.deriv(t, slope))
    p, mu, fwd = input_var, 0.0, []  # stream mean square and mean, per block: (p, mu, layers)
    for blk in blocks:
        layers, y2 = [], p
        for lay in blk.layers:
            layers.append(_Moments(phi, dphi, lay.sigma_w2 * y2 + lay.sigma_b2, lay.sigma_b2))
            y2 = layers[-1].f2
        fwd.append((p, mu, layers))
        a, last = blk.scale, layers[-1]
        sc_p, sc_mu = (p, mu) if blk.shortcut == "identity" else (blk.shortcut_sigma2 * p, 0.0)
        p, mu = sc_p + a * a * last.f2 + 2 * a * sc_mu * last.f1, sc_mu + a * last.f1

    def seed(energy: float, p: float, mu: float, along_x: float | None = None) -> np.ndarray:
        """(gamma, xi) covariance of a random part's share of span{1, x}: energy / width along
        x's complement 1 - (mu / p) x, and along x `along_x` (default: isotropic, energy / width)."""
        c = np.array([1.0, -mu / p]) / np.sqrt(max(1.0 - mu * mu / p, 1e-300))
        x_share = energy / width if along_x is None else along_x
        return energy / width * np.outer(c, c) + x_share / p * np.array([[0.0, 0.0], [0.0, 1.0]])

    S, R, out, log_scale = seed(1.0, p, mu), 1.0, [], 0.0
    p_out, mu_out = p, mu  # the stream's statistics at the block output
    for blk, (p, mu, layers) in zip(reversed(blocks), reversed(fwd)):
        a, k = blk.scale, len(layers)
        # the branch's Euler defect D = f(x) - J_f x, layer by layer: D_i = d_i + phi'(h_i) W_i D_(i-1)
        defect = 0.0
        for m, lay in zip(layers, blk.layers):
            defect = m.euler2 + lay.sigma_w2 * m.d2 * defect
        span = S[0, 0] + 2 * S[0, 1] * mu_out + S[1, 1] * p_out  # energy of gamma 1 + xi x at the output
        # g_in . x_in = g_out . x_out - a g_out . D exactly: only the defect seeds the x direction
        along_x = a * a * (R * defect + span * (defect - layers[-1].euler1 ** 2)) / (p * width)
        sw2 = [lay.sigma_w2 for lay in blk.layers]
        last = layers[-1]
        # the branch output's error signal a (gamma 1 + xi x + a xi phi(h_k) + rest): energies
        gg, gx, xx = S[0, 0], S[0, 1], S[1, 1]
        sys_e = a * a * (gg * last.d2 + 2 * gx * (mu * last.d2 + a * last.d2f)
                         + xx * (p * last.d2 + 2 * a * mu * last.d2f + a * a * last.d2f2))
        energies = [sys_e + a * a * last.d2 * R]  # ||delta_k||^2 per unit
        # systematic coefficient of W_k^T delta_k along y_{k-1}: u . (gamma, xi)
        u = a * sw2[-1] * np.array([last.dd, last.dd * mu + a * last.dff])
        for i in range(k - 2, -1, -1):  # inner layers: delta_i = phi'(h_i) (c phi(h_i) + random)
            m = layers[i]
            energies.append(u @ S @ u * m.d2f2 + m.d2 * sw2[i + 1] * energies[-1])
            u = u * sw2[i] * m.dff
        for e in energies:
            out.append(log_scale + np.log10(e))
        A = np.array([[1.0, a * last.f1], [u[0], 1.0 + u[1]]])  # (gamma, xi) at the block input
        skip = 1.0 if blk.shortcut == "identity" else blk.shortcut_sigma2
        rand = sw2[0] * energies[-1]  # random part of W_1^T delta_1
        R = skip * R + rand + a * a * xx * (last.f2 - last.f1**2)  # + xi a (phi(h_k) - mean)
        S = A @ S @ A.T * (1.0 if blk.shortcut == "identity" else 0.0) + seed(rand, p, mu, along_x)
        size = R + S[0, 0] + 2 * S[0, 1] * mu + S[1, 1] * p  # renormalise: ratios reach 1e20
        R, S, log_scale = R / size, S / size, log_scale + np.log10(size)
        p_out, mu_out = p, mu
    return np.array(out[::-1])
