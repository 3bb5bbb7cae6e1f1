"""The gradient along a real network's residual stream at initialisation, block by block.

Pure: the recursion over per-block forward statistics (streamstats.py reads them off a Trace).
G is the per-sample squared norm of dL/d(stream). A block is a chain of stream *events* in
forward order: a branch that read an earlier state joins (`x + f(x)`), or replaces the stream
(a ResNet's projection shortcut, a block without identity); a norm acts on the whole stream
(post-LN). Going backward, the identity passes G unchanged, a norm multiplies it by its gain,
and a path that read state S and joined at state T adds `chi G(T)` to `G(S)`.

The gain of a branch is its Jacobian's squared Frobenius norm per element (an isotropic
gradient, independent of the weights: the mean-field assumption). For a branch that is linear
in its input, or positively homogeneous (ReLU, GELU and SiLU at the small pre-activations of a
0.02 init), or made scale-invariant by a norm, it equals the forward variance gain:

    chi = r v / sigma^2        v: the branch's output variance (exit scales such as LayerScale
                               included), sigma^2: the stream's variance where it reads it

with r = 1; a gated branch `W (phi(A x) * B x)` is of degree two (r = 2), and a branch whose
output depends on the stream only through attention scores (cross-attention: the values come
from elsewhere) passes almost nothing back (r = 0). Since the stream's variance grows by each
branch's v (Xiong et al. 2020 for pre-LN transformers; De & Smith 2020 for normalised ResNets),
`1 + v / sigma^2` is the ratio of the variances after and before the branch: with r = 1 a
pre-norm stack keeps `G x sigma^2` constant, so the gradient grows towards the input as the
stream's variance shrinks, by `sqrt(sigma_L^2 / sigma_l^2)` (Brock et al. 2021 draw the
variance side of this as "signal propagation plots"). Post-LN (BERT) resets the variance in
every block and keeps G flat. A ReLU after the join (ResNet v1) multiplies G by the fraction
of its inputs that are positive.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SOURCE = "residual-stream recursion (Xiong et al. 2020; De & Smith 2020; Brock et al. 2021)"


@dataclass(frozen=True)
class Event:
    """One thing that happens to the stream inside a block, in forward order."""

    kind: str  # "join": a branch adds its output; "norm": the whole stream is mapped (post-LN)
    gain: float  # join: chi of the branch; norm: the backward gain of the map
    reads: int = 0  # join: the state it read (0: the block input; i: the state after event i)
    keeps: bool = True  # join: the stream passes on beside it (False: a projection or a block without identity)


@dataclass(frozen=True)
class BlockStats:
    """What the recursion needs about one block: its events, what follows it, its output's size."""

    name: str
    events: tuple[Event, ...]
    elements: int  # elements of the block output per sample (per-element RMS = sqrt(G / elements))
    after: float = 1.0  # gain of an activation after the join (ReLU: fraction of positive inputs)
    before: float = 1.0  # gain of the layers between the previous block's output and this block


def block_gain(b: BlockStats) -> float:
    """G at the block input / G at its output (before `b.before`)."""
    n = len(b.events)
    g = np.zeros(n + 1)  # G at state i: 0 = the block input, i = after event i
    extra = np.zeros(n + 1)  # contributions of branches that read state i
    g[n] = b.after
    for i in range(n, 0, -1):
        e = b.events[i - 1]
        g[i] += extra[i]
        if e.kind == "join":
            g[i - 1] = g[i] if e.keeps else 0.0
            extra[e.reads] += e.gain * g[i]
        else:
            g[i - 1] = g[i] * e.gain
    return float(g[0] + extra[0])


def profile(blocks: list[BlockStats]) -> np.ndarray:
    """Predicted log10 per-element RMS of dL/d(block output), relative to the last block."""
    log_g = np.zeros(len(blocks))  # log10 G at each block's output, G = 1 at the last one
    for k in range(len(blocks) - 1, 0, -1):
        b = blocks[k]
        log_g[k - 1] = log_g[k] + np.log10(block_gain(b) * b.before)
    log_rms = 0.5 * (log_g - np.log10([max(b.elements, 1) for b in blocks]))
    return log_rms - log_rms[-1]

