"""Pure: the backward gain of one path of a block (a branch, a projection) from forward statistics.

chi = r v / sigma^2 (stream.py): v, the path's output variance at its exits; sigma^2, the
stream's variance where the path's entry layer reads it (centred when the path normalises with
a mean: LayerNorm, BatchNorm; else the mean square); r, the path's Jacobian gain over its
variance gain: 1 for a linear, positively homogeneous or normalised path; 0 when the exits
depend on the entry only through attention scores (cross-attention); 2 for a gate
`W (phi(A x) * B x)`; and for each activation the probe saw on the way, `q E[phi'^2] / E[phi^2]`,
q the variance of the centred Gaussian pre-activation that gives the measured E[phi^2], and
E[phi^2] the variance instead of the mean square when a centring norm follows (it removes the
mean: Yang et al. 2019's per-layer BatchNorm gain, pi / (pi - 1) for ReLU).
"""
from __future__ import annotations

import functools

import numpy as np

from .. import activations
from ..diagnose.structure import Structure
from ..errors import GradDoctorError
from ..probe.trace import Trace
from .quad import gauss_expect

UNCENTRED_NORMS = ("RMS", "T5LayerNorm")  # norms that divide by the mean square, not the variance


class ForwardStats:
    """The first recorded step's forward statistics of every layer, by trace index."""

    def __init__(self, trace: Trace, s: Structure) -> None:
        first = lambda metric: np.asarray(trace[metric][0], dtype=float)
        self.out2 = first("out_rms") ** 2
        self.var = first("act_std") ** 2
        self.mean = first("act_mean")
        self.ms = self.var + self.mean ** 2
        self.deriv2 = first("act_deriv_rms") ** 2
        self.w2 = first("weight_rms") ** 2
        self.layers = trace.layers
        self.s = s
        rec = (trace.structure or {})
        self.inputs = {n: set(info.get("inputs", {})) for n, info in rec.get("layers", {}).items()}
        self.outputs = {b["name"]: set(b.get("outputs", [])) for b in rec.get("blocks", [])}

    def feeds(self, i: int) -> set[str]:
        """Names of what layer i reads (layers, or '<block>:in')."""
        return self.inputs.get(self.layers[i].name, set())

    def centring(self, i: int) -> bool:
        """True for a norm that subtracts a mean (LayerNorm, BatchNorm, GroupNorm)."""
        return self.s.is_norm(i) and not any(w in self.s.types[i] for w in UNCENTRED_NORMS)

    def gain(self, i: int) -> float:
        """Backward gain of one layer on the whole stream, from its forward statistics."""
        return self.out2[i] / (self.var[i] if self.s.is_norm(i) else self.ms[i])


def _reach(edges: set[tuple[int, int]], start: int) -> set[int]:
    seen, todo = {start}, [start]
    while todo:
        a = todo.pop()
        for p, c in edges:
            if p == a and c not in seen:
                seen.add(c)
                todo.append(c)
    return seen


def _ratio(st: ForwardStats, path: tuple[int, ...], entry: int) -> float:
    """r of one path that starts at `entry` (see the module docstring)."""
    s, members = st.s, set(path)
    edges = {(a, b) for a, b in s.edges if a in members and b in members and a not in s.score_side}
    reach = _reach(edges, entry)
    if not any(i in reach for i in path if not any(p == i for p, _ in edges)):
        return 0.0  # no exit reachable from the entry except through attention scores
    r = 1.0
    for c in sorted(reach):
        fed = [p for p, q in edges if q == c and p in reach]
        if len(fed) >= 2 and all(s.is_weight(p) for p in fed):
            srcs = [{a for a, b in edges if b == p} for p in fed]
            if all(x and x == srcs[0] for x in srcs):  # a gate: two weight layers of the same input, multiplied
                r *= 2.0
        act = st.layers[c].activation
        if len(fed) == 1 and act and np.isfinite(st.deriv2[c]) and st.ms[c] > 0:
            normed = any(st.centring(j) for j in _reach(edges, c) if j != c)
            q = _pre_activation(act, st.ms[c])
            r *= q * st.deriv2[c] / (st.var[c] if normed else st.ms[c]) if np.isfinite(q) else 1.0
    return r


@functools.cache
def _phi2_table(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(log q, log E[phi(sqrt(q) z)^2]) on a grid: E[phi^2] rises with q for every registry activation."""
    act = activations.get(name)
    log_q = np.linspace(-12.0, 8.0, 401) * np.log(10)
    return log_q, np.log(gauss_expect(lambda t: act.fn(t, 0.01) ** 2, np.exp(log_q)))


def _pre_activation(name: str, mean_square: float) -> float:
    """The variance q of a centred Gaussian pre-activation whose image under phi has this mean square."""
    try:
        log_q, log_m = _phi2_table(name)
    except GradDoctorError:  # an activation the registry does not know
        return float("nan")
    return float(np.exp(np.interp(np.log(mean_square), log_m, log_q)))


def path_gain(st: ForwardStats, path: tuple[int, ...], exits: tuple[int, ...], scale2: float,
         stream_makers: frozenset[int] = frozenset()) -> tuple[float, int]:
    """(chi, entry layer) of a path that reads the stream and writes `exits` (-1: it reads nothing)."""
    names = {st.s.names[j] for j in path}
    fed = [i for i in path if any(f.endswith(":in") or f not in names for f in st.feeds(i))]
    if not fed or not exits:
        return 0.0, -1
    entry = fed[0]
    # a path that branches off another one inside the block (BiT's shortcut reads the branch's
    # first norm): its own path starts where that prefix reads the stream
    index = {n: i for i, n in enumerate(st.s.names)}
    while len(st.feeds(entry)) == 1 and (p := index.get(next(iter(st.feeds(entry))))) is not None \
            and p not in stream_makers and st.s.block_of[p] == st.s.block_of[entry] and p not in path:
        path, entry = (p, *path), p
    sigma2 = st.var[entry] if any(st.centring(i) for i in path) else st.ms[entry]
    v = float(sum(st.out2[i] for i in exits)) * scale2
    return _ratio(st, path, entry) * v / sigma2, entry
