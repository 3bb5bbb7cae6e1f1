"""Pure: what the verdicts compared, for the reports — each block along its depth axis, each layer against what.

The rules judge like with like (depth.py, patterns.py); the per-layer table and the per-block
line of the reports show exactly those numbers, from the same functions:
- a chain of layers (no stacks of blocks): every layer of the body against the reference layer
  (the last one before the output), leaving out attention internals and outputs not batched
  by sample (rules.vanishing_exploding);
- a network of blocks: dL/d(block output) per element against the last block of its stack
  (depth.along_depth); a layer inside a branch against the gradient entering the branch, a
  branch's exit against its block's output (depth.branch_levels); attention Q/K against the
  value projection of the same attention (patterns.qk_levels). Layers outside the blocks are
  not compared layer by layer.
"""
from __future__ import annotations

import numpy as np

from .depth import branch_levels, stacks
from .evidence import _judged
from .patterns import qk_levels
from .signals import Signals, median


def block_levels(s: Signals) -> dict[str, float]:
    """{block name: median log10 of dL/d(block output) per element over its stack's last block's}."""
    judged = _judged(s)
    out: dict[str, float] = {}
    if not len(judged):
        return out
    for _, idx in stacks(s):
        med = median(s.block_log[:, idx] - s.block_log[:, idx[-1]:idx[-1] + 1], judged)
        out.update({s.structure.blocks[k].name: float(v) for k, v in zip(idx, med) if np.isfinite(v)})
    return out


def layer_levels(s: Signals) -> dict[int, tuple[str, float]]:
    """{layer index: (the layer or block it was compared with, median decades above (+) or below (-) it)}."""
    judged = _judged(s)
    if not len(judged):
        return {}
    if not stacks(s):  # a chain of layers
        apart = s.structure.apart() if s.structure is not None else frozenset()
        body = [i for i in s.body if i not in apart] or list(s.body)
        rel = median(s.rel, judged)
        return {int(i): (s.names[s.ref], float(rel[i])) for i in body if np.isfinite(rel[i])}
    out: dict[int, tuple[str, float]] = {}
    for i, level in branch_levels(s).items():
        d = median(level.decades[:, None], judged)[0]
        if np.isfinite(d):
            out[i] = (level.against, float(d))
    for qk in qk_levels(s, judged).values():
        out.update(qk)
    return out
