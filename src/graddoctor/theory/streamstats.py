"""Pure: a Trace's forward statistics at initialisation as the stream recursion's input.

Reads, at the first recorded step, only what the forward pass gave the probe (no gradient):
per layer the RMS of its output (`out_rms`), the mean and std of its input (`act_mean`,
`act_std`), E[phi'^2] of the activation feeding it (`act_deriv_rms`) and the RMS of its own
parameters (`weight_rms`: a block's LayerScale); and the recorded structure (which layers feed
which, the blocks, their branches, shortcuts and outputs). Per block:

- each path (a branch, a projection shortcut) passes back chi = r v / sigma^2 (streampath.py);
- norms on the shortcut (post-LN) multiply G by their gain, a projection shortcut or a block
  without identity replaces the stream; layers between two blocks (downsampling) multiply G
  by the ratio of their output to input mean square (a norm: to the input variance);
- an activation between a block's output and the next block (ResNet v1's ReLU after the join)
  multiplies G by its E[phi'^2], measured by the probe on the next block's input; for the last
  block a ReLU's is Phi(mu / s) for a Gaussian join of mean mu and variance s^2.
"""
from __future__ import annotations

import math

import numpy as np

from ..diagnose.structure import Block, Structure, analyse
from ..probe.trace import Trace
from .stream import SOURCE, BlockStats, Event, profile
from .streampath import ForwardStats, path_gain

BLOCK_SERIES = "block_delta_rms"


def block_stats(st: ForwardStats, k: int) -> BlockStats:
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
        gain, entry = path_gain(st, sc, (sc[-1],), 1.0, makers)
        items.append((-1, "join", gain, (sc[-1],), entry))
    else:
        items += [(i, "norm", st.gain(i), (i,), -1) for i in sc]
    for br in blk.branches:
        gain, entry = path_gain(st, br.layers, br.exits, scale2, makers)
        if entry >= 0:
            items.append((max(br.exits), "join", gain, br.exits, entry))
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


def _after(st: ForwardStats, nxt: Block) -> tuple[float, str] | None:
    """(E[phi'^2], activation) between a block's output and the next block, as the probe saw it."""
    readers = [i for i in nxt.layers if f"{nxt.name}:in" in st.feeds(i)]
    seen = [(st.deriv2[i], st.layers[i].activation) for i in readers
            if st.layers[i].activation and np.isfinite(st.deriv2[i])]
    return (float(np.mean([d for d, _ in seen])), seen[0][1]) if seen else None


def _relu_after(st: ForwardStats, blk: Block) -> float:
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
    st = ForwardStats(trace, s)
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
