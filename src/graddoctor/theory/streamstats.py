"""Pure: a Trace's forward statistics at initialisation as the stream recursion's input.

Reads, at the first recorded step, only what the forward pass gave the probe (no gradient):
per layer the RMS of its output (`out_rms`), the mean and std of its input (`act_mean`,
`act_std`), E[phi'^2] of the activation feeding it (`act_deriv_rms`) and the RMS of its own
parameters (`weight_rms`: a block's LayerScale); and the recorded structure (which layers feed
which, the blocks, their branches, shortcuts and outputs). Per block:

- a path's output variance v = its exit layers' mean squares (times the block's own scale
  parameters when they sit on the way out: ConvNeXt's LayerScale, BEiT's lambdas);
- the stream's variance sigma^2 where the path reads it = the input variance of its entry layer
  (the first one fed from outside the path: a pre-LN norm, a ResNet's first convolution),
  centred when the path normalises with a mean (LayerNorm, BatchNorm), else the mean square;
- r, the path's Jacobian gain over its variance gain: 0 when its output depends on the entry only
  through attention scores (cross-attention), 2 for a gate `W (phi(A x) * B x)`, times
  `q E[phi'^2] / E[phi^2]` for every activation inside it (q: the variance feeding it), where
  E[phi^2] is the variance instead of the mean square when a centring norm follows (it removes
  the mean: Yang et al. 2019's per-layer BatchNorm gain, pi / (pi - 1) for ReLU);
- norms on the shortcut (post-LN) multiply G by their gain, a projection shortcut or a block
  without identity replaces the stream; layers between two blocks (downsampling) multiply G
  by the ratio of their output to input mean square (a norm: to the input variance);
- an activation between a block's output and the next block (ResNet v1's ReLU after the join)
  multiplies G by its E[phi'^2], measured by the probe on the next block's input; for the last
  block a ReLU's is Phi(mu / s) for a Gaussian join of mean mu and variance s^2.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .. import activations
from ..diagnose.structure import Block, Structure, analyse
from ..errors import GradDoctorError
from ..probe.trace import Trace
from .quad import gauss_expect
from .stream import SOURCE, BlockStats, Event, profile

BLOCK_SERIES = "block_delta_rms"
UNCENTRED_NORMS = ("RMS", "T5LayerNorm")  # norms that divide by the mean square, not the variance


class _Stats:
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


def _ratio(st: _Stats, path: tuple[int, ...], entry: int) -> float:
    """r of one path (see the module docstring)."""
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
            r *= _pre_activation(act, st.ms[c]) * st.deriv2[c] / (st.var[c] if normed else st.ms[c])
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


def _chi(st: _Stats, path: tuple[int, ...], exits: tuple[int, ...], scale2: float,
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


def block_stats(st: _Stats, k: int) -> BlockStats:
    """The recursion's input for block k (without what lies before or after it)."""
    s = st.s
    blk: Block = s.blocks[k]
    scale2 = st.w2[blk.self_layer] if blk.exit_params and blk.self_layer >= 0 else 1.0
    items = []  # (forward position, kind, gain, layers that output the new stream state, entry layer)
    sc = blk.shortcut
    projection = any(s.is_weight(i) for i in sc)
    # layers whose output is a state of the stream (a pre-activation block's shared first norm is not)
    makers = frozenset(sc[-1:] if projection else sc) | frozenset(i for br in blk.branches for i in br.exits)
    if projection:
        chi, entry = _chi(st, sc, (sc[-1],), 1.0, makers)
        items.append((-1, "join", chi, (sc[-1],), entry))
    else:
        items += [(i, "norm", st.gain(i), (i,), -1) for i in sc]
    for br in blk.branches:
        chi, entry = _chi(st, br.layers, br.exits, scale2, makers)
        if entry >= 0:
            items.append((max(br.exits), "join", chi, br.exits, entry))
    items.sort(key=lambda it: it[0])
    made_by = {s.names[i]: n for n, it in enumerate(items, start=1) for i in it[3]}  # stream state it makes
    identity = "in" in st.outputs.get(blk.name, {"in"}) or (bool(sc) and not projection)
    events, replaced = [], False
    for _, kind, gain, _, entry in items:
        if kind != "join":
            events.append(Event(kind, float(gain)))
            continue
        reads = max((made_by.get(f, 0) for f in st.feeds(entry)), default=0)
        keeps = identity or replaced
        events.append(Event("join", float(gain), reads, keeps))
        replaced = True
    out = blk.self_layer if blk.self_layer >= 0 else items[-1][3][-1] if items else -1
    return BlockStats(blk.name, tuple(events), int(st.layers[out].out_size) if out >= 0 else 0)


def _after(st: _Stats, nxt: Block) -> tuple[float, str] | None:
    """(E[phi'^2], activation) between a block's output and the next block, as the probe saw it."""
    readers = [i for i in nxt.layers if f"{nxt.name}:in" in st.feeds(i)]
    seen = [(st.deriv2[i], st.layers[i].activation) for i in readers
            if st.layers[i].activation and np.isfinite(st.deriv2[i])]
    return (float(np.mean([d for d, _ in seen])), seen[0][1]) if seen else None


def _relu_after(st: _Stats, blk: Block) -> float:
    """E[relu'^2] = P(join > 0) for a Gaussian join: the stream's mean (if kept) over the joined spread."""
    readers = [i for i in blk.layers if f"{blk.name}:in" in st.feeds(i)]
    projection = any(st.s.is_weight(i) for i in blk.shortcut)
    kept = "in" in st.outputs.get(blk.name, {"in"}) and not projection
    paths = [br.exits for br in blk.branches] + ([(blk.shortcut[-1],)] if projection else [])
    spread = sum(st.out2[i] for ex in paths for i in ex) + (st.var[readers[0]] if kept and readers else 0.0)
    mu = st.mean[readers[0]] if kept and readers else 0.0
    return 0.5 * (1 + math.erf(mu / math.sqrt(2 * max(spread, 1e-30))))


def stack_stats(trace: Trace, s: Structure, stack: list[int]) -> list[BlockStats]:
    """The recursion's input for every block of one stack (forward order)."""
    st = _Stats(trace, s)
    out, act = [], None
    for n, k in enumerate(stack):
        b = block_stats(st, k)
        between = []
        if n > 0:
            lo, hi = max(s.blocks[stack[n - 1]].layers), min(s.blocks[k].layers)
            between = [i for i in range(lo + 1, hi) if s.block_of[i] < 0]
        before = float(np.prod([st.gain(i) for i in between])) if between else 1.0
        after = 1.0
        if n + 1 < len(stack):
            nxt = s.blocks[stack[n + 1]]
            gap = any(s.block_of[i] < 0 for i in range(max(s.blocks[k].layers) + 1, min(nxt.layers)))
            seen = None if gap else _after(st, nxt)
            if seen:
                after, act = seen
        elif act == "relu":  # the last block: nothing after it in the stack reads its output
            after = _relu_after(st, s.blocks[k])
        out.append(BlockStats(b.name, b.events, b.elements, after, before))
    return out


def _form(stats: list[BlockStats], s: Structure, stack: list[int]) -> str:
    """pre-norm, post-norm, normalised branches or unnormalised branches."""
    if any(e.kind == "norm" for b in stats for e in b.events):
        return "post-norm"
    branches = [br for k in stack for br in s.blocks[k].branches if br.layers]
    if all(s.is_norm(min(br.layers)) for br in branches):
        return "pre-norm"
    return "normalised branches" if any(s.is_norm(i) for br in branches for i in br.layers) else "unnormalised branches"


def stream_evidence(trace: Trace, structure: Structure | None = None) -> dict | None:
    """Predicted vs measured per-block profile of the stream gradient at init (None: no residual stream)."""
    if len(trace) == 0 or not trace.structure or not trace.series.layers(BLOCK_SERIES):
        return None
    s = structure or analyse(trace)
    if s.axis != "residual stream":
        return None
    _, values = trace.series.get(BLOCK_SERIES)
    measured_all = values[0]
    stacks = []
    for key, stack in s.stacks.items():
        stack = [k for k in stack if 0 <= s.blocks[k].position < len(measured_all)]
        meas = measured_all[[s.blocks[k].position for k in stack]]
        if len(stack) < 2 or not (np.isfinite(meas) & (meas > 0)).all():
            continue
        stats = stack_stats(trace, s, stack)
        pred = profile(stats)
        if not np.isfinite(pred).all():
            continue
        meas = np.log10(meas / meas[-1])
        err = meas - pred
        stacks.append({"stack": key, "form": _form(stats, s, stack), "blocks": [b.name for b in stats],
                       "predicted": [float(x) for x in pred], "measured": [float(x) for x in meas],
                       "worst_error": float(np.abs(err).max()), "rms_error": float(np.sqrt(np.mean(err ** 2)))})
    if not stacks:
        return None
    errors = np.concatenate([np.subtract(x["measured"], x["predicted"]) for x in stacks])
    return {"quantity": "log10 RMS of dL/d(block output) relative to the stack's last block, at initialisation",
            "source": SOURCE, "stacks": stacks, "worst_error": float(np.abs(errors).max()),
            "rms_error": float(np.sqrt(np.mean(errors ** 2)))}
