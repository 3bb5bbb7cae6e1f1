"""Pure: vanishing and exploding gradients along the depth axis of a network of blocks, and inside branches.

A network of repeated blocks (a transformer, a ResNet) carries its gradient along its depth
axis: the residual stream or the chain of blocks. What vanishes or explodes is dL/d(block
output) from block to block — compared per element, so widths and resolutions do not matter,
relative to the last block of each stack. A layer inside a block is compared with the
gradient entering its branch (the branch's exit), not with layers in other branches or
outside the blocks: a branch receives `scale x` the stream's gradient by design.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import thresholds as T
from .causes import SATURATING, rank
from .evidence import _finding, _finite_steps, _judged, _lr_cause, appeared_in_training
from .findings import Cause, Finding
from .impact import judge_impact
from .signals import Signals, median, persistent


def stacks(s: Signals) -> list[tuple[str, list[int]]]:
    """The stacks judged along their depth axis: MIN_BLOCKS or more blocks with a measured signal."""
    if s.structure is None or s.block_log is None:
        return []
    out = []
    for key, idx in s.structure.stacks.items():
        ok = [k for k in idx if np.isfinite(s.block_log[:, k]).any()]
        if len(ok) >= T.MIN_BLOCKS:
            out.append((key, ok))
    return out


def _transitions(s: Signals, idx: list[int]) -> np.ndarray:
    """For each block of a stack: how many stage transitions lie between it and the stack's last block."""
    stage = [s.structure.blocks[k].stage for k in idx]
    change = np.array([stage[j] != stage[j + 1] for j in range(len(idx) - 1)] + [False], dtype=float)
    return np.cumsum(change[::-1])[::-1]


def _has_norms(s: Signals, idx: list[int]) -> bool:
    return all(any(s.structure.is_norm(i) for i in s.structure.blocks[k].layers) for k in idx)


def _block_range(s: Signals, idx: list[int]) -> str:
    names = [s.structure.blocks[k].name for k in idx]
    return f"'{names[0]}'" + (f" .. '{names[-1]}'" if len(names) > 1 else "")


def _forward_gain(s: Signals, layers: list[int], judged: np.ndarray) -> float:
    """Median log10 of output RMS over input RMS of the weight layers: how the weights scale the signal."""
    out = median(s.layer["out_rms"], judged)
    rms_in = np.sqrt(median(s.layer["act_std"], judged) ** 2 + median(s.layer["act_mean"], judged) ** 2)
    with np.errstate(all="ignore"):
        g = np.log10(out / rms_in)
    w = [i for i in layers if s.structure.is_weight(i) and np.isfinite(g[i])]
    return float(np.median(g[w])) if w else float("nan")


def depth_causes(s: Signals, kind: str, idx: list[int], affected: list[int], decades: float,
                 per_block: float, judged: np.ndarray, onset: bool) -> list[Cause]:
    """Ranked causes of a vanishing/exploding depth axis, from the affected blocks' own numbers."""
    st = s.structure
    layers = [i for k in affected for i in st.blocks[k].layers]
    residual = sum(st.blocks[k].residual for k in idx) >= len(idx) / 2
    n = len(affected)
    span = _block_range(s, affected)
    out: list[Cause] = []
    acts = sorted({s.activations[i] for i in layers if s.activations[i] in SATURATING})
    if kind == "vanishing" and acts:
        sat = median(s.layer["saturated"], judged)[layers]
        sat = float(np.nanmean(sat)) if np.isfinite(sat).any() else 0.0
        share = sum(s.activations[i] in SATURATING for i in layers) / max(len(layers), 1)
        why = f"{sat:.0%} of their units saturated" if sat > 0.05 else (
            "sigmoid' is at most 0.25" if "sigmoid" in acts else "tanh' < 1 away from 0")
        out.append(Cause("saturating_activation",
                         f"the blocks {span} apply {'/'.join(acts)} ({why}): each block passes on "
                         f"~{10 ** per_block:.2g}x of the gradient", {"activations": acts, "saturated": sat,
                                                                      "per_block": 10 ** per_block},
                         abs(decades) * (0.5 + share)))
    gain = _forward_gain(s, layers, judged)
    ev = {"blocks": n, "per_block": 10 ** per_block, "forward_gain": 10 ** gain if np.isfinite(gain) else None}
    if not residual:
        out.append(Cause("chain_product_depth",
                         f"the blocks have no skip connection: the gradient passes through every block's layers; "
                         f"{n} per-block factors of ~{10 ** per_block:.2g}x multiply to {10 ** decades:.2g}x",
                         {**ev, "residual": False}, 0.9 * abs(decades)))
    elif n >= T.DEEP_LAYERS:
        out.append(Cause("chain_product_depth", f"{n} per-block factors of ~{10 ** per_block:.2g}x multiply to "
                         f"{10 ** decades:.2g}x", ev, T.DEPTH_SHARE * abs(decades)))
    if kind == "vanishing":
        score = abs(decades) * (1.0 if np.isfinite(gain) and gain < np.log10(T.FACTOR_ONE_LAYER_LOW) else 0.3)
        out.append(Cause("init_too_small", f"the weights in {span} scale the signal by ~{10 ** gain:.2g}x "
                         "(median output/input RMS of their weight layers)" if np.isfinite(gain) else
                         f"the blocks {span} shrink the gradient", ev, score))
    else:
        score = abs(decades) * (1.0 if residual or (np.isfinite(gain) and gain > np.log10(T.FACTOR_HIGH)) else 0.5)
        out.append(Cause("init_too_large", f"each block multiplies the stream's gradient by ~{10 ** per_block:.2g}x "
                         f"through its layers (their weights scale the signal by ~{10 ** gain:.2g}x)"
                         if np.isfinite(gain) else f"the blocks {span} amplify the gradient", ev, score))
    lr = _lr_cause(s, judged, onset) if s.n_steps > 1 else None
    if lr is not None:
        out.append(lr)
    dead = median(s.layer["dead"], judged)[layers] if layers else np.array([])
    dead_frac = float(np.nanmean(dead)) if np.isfinite(dead).any() else 0.0
    if kind == "vanishing" and dead_frac > T.DEAD_FRACTION:
        out.append(Cause("dead_relu", f"{dead_frac:.0%} of the units in {span} are zero for the whole batch",
                         {"dead": dead_frac}, dead_frac * abs(decades)))
    return rank(out)


def along_depth(s: Signals) -> list[Finding]:
    """dL/d(block output) far below (vanishing) or above (exploding) the last block's, per stack."""
    judged = _judged(s)
    out: list[Finding] = []
    for key, idx in stacks(s):
        lb = s.block_log[:, idx]
        rel = lb - lb[:, -1:]
        transitions = T.TRANSITION_DECADES * _transitions(s, idx)
        med = median(rel, judged)
        names = [s.structure.blocks[k].name for k in idx]
        for kind, sign, limit in (("vanishing", -1, T.VANISH_DECADES), ("exploding", 1, T.EXPLODE_DECADES)):
            # stage transitions lower the per-element signal towards the input (healthy nets: all drops)
            allow = transitions if kind == "vanishing" else np.zeros(len(idx))
            with np.errstate(invalid="ignore"):
                excess = sign * rel[judged] - allow
            per_step = np.array([np.nanmax(r) > limit if np.isfinite(r).any() else False for r in excess])
            if not persistent(per_step):
                continue
            hit = np.flatnonzero(np.nan_to_num(sign * med - allow, nan=-np.inf) > T.AFFECTED_DECADES)
            if len(hit) == 0:
                continue
            j0 = int(np.nanargmax(sign * med - allow))
            decades = float(med[j0])
            per_block = decades / max(len(idx) - 1 - j0, 1)
            gains = np.full(len(idx), np.nan)
            gains[1:] = med[:-1] - med[1:]  # block k's backward: out_{k-1} vs out_k
            worst = int(np.nanargmax(sign * gains[1:])) + 1 if np.isfinite(gains[1:]).any() else j0
            residual = sum(s.structure.blocks[k].residual for k in idx) >= len(idx) / 2
            first = _finite_steps(s)[0]
            onset = appeared_in_training(s, sign * rel[first] - allow, limit)
            affected = [idx[j] for j in hit]
            axis = "residual stream" if residual else "chain of blocks"
            evidence = {"axis": axis, "stack": key, "decades": decades, "first_block": names[hit[0]],
                        "last_block": names[hit[-1]], "worst_block": names[worst],
                        "worst_gain": float(10 ** gains[worst]) if np.isfinite(gains[worst]) else None,
                        "reference_block": names[-1], "steps_judged": len(judged),
                        "block_decades": {n: float(v) for n, v in zip(names, med)},
                        "transition_allowance": float(allow[j0])}
            if kind == "exploding" and residual and _has_norms(s, idx) and per_block <= T.NORM_GROWTH_PER_BLOCK:
                out.append(_finding("by_design", "info", [], s, (
                    f"normalisation growth along the {axis} of {key}: the gradient grows {10 ** decades:.3g}x from "
                    f"'{names[-1]}' back to '{names[j0]}' (~{10 ** per_block:.2g}x per block), as normalised "
                    "networks do at init (Yang et al. 2019); residual networks train through it"),
                    {**evidence, "pattern": "norm_growth", "per_block_decades": per_block}, []))
                continue
            causes = depth_causes(s, kind, idx, [idx[j] for j in range(j0, len(idx) - 1)] or affected,
                                  decades, per_block, judged, onset)
            summary = (f"along the {axis} of {key}, dL/d(block output) at '{names[j0]}' is {10 ** decades:.3g}x "
                       f"that at '{names[-1]}' (per element); {len(hit)} blocks affected; the gradient "
                       f"{'drops' if sign < 0 else 'jumps'} most across '{names[worst]}'"
                       + (f" ({10 ** gains[worst]:.2g}x)" if np.isfinite(gains[worst]) else ""))
            layers = [i for k in affected for i in s.structure.blocks[k].layers]
            severity = "critical" if abs(decades) - allow[j0] > T.CRITICAL_DECADES else "warning"
            f = _finding(kind, severity, layers, s, summary, evidence, causes)
            out.append(judge_impact(s, f, layers, judged) if kind == "vanishing" else f)
    return out


class Level(NamedTuple):
    """What a layer's signal was compared with, and how far above (+) or below (-) it was."""

    against: str  # a layer's or a block's name
    decades: np.ndarray  # (S,) log10 per-element RMS ratio, per recorded step
    exit: bool = False  # a branch's exit, compared with its block's output


def branch_levels(s: Signals) -> dict[int, Level]:
    """What the verdicts compare each branch layer with, and its level against it per step (decades, (S,)).

    A layer inside a branch: against the gradient entering the branch (the median of its exits;
    inside_branches). An exit of a residual block's branch: against the block's output (the
    stream there; patterns.branch_scale). Attention Q/K (patterns.attention_qk) and outputs not
    batched by sample are not here. {} for a chain of layers (no stacks).
    """
    out: dict[int, Level] = {}
    if not stacks(s):
        return out
    st = s.structure
    for k, b in enumerate(st.blocks):
        for br in b.branches:
            if not br.exits:
                continue
            entering = np.nanmedian(s.log_rms[:, list(br.exits)], axis=1)  # (S,)
            for i in br.layers:
                if i in br.exits:
                    if b.residual:
                        out[i] = Level(b.name, s.log_rms[:, i] - s.block_log[:, k], exit=True)
                elif i not in st.score_side and i not in st.other_lead:
                    out[i] = Level(s.names[br.exits[-1]], s.log_rms[:, i] - entering)
    return out


def inside_branches(s: Signals) -> list[Finding]:
    """A layer's signal far below (or above) the gradient entering its branch, beyond what its design explains."""
    judged = _judged(s)
    st = s.structure
    low, high = [], []
    depth: dict[int, float] = {}
    levels = branch_levels(s)
    for i, level in levels.items():
        if level.exit:
            continue  # judged against the stream (patterns.branch_scale)
        inner = level.decades[judged]
        if not np.isfinite(inner).any():
            continue
        depth[i] = float(np.nanmedian(inner))
        if persistent(inner < -T.INNER_VANISH_DECADES):
            low.append(i)
        elif persistent(inner > T.INNER_EXPLODE_DECADES):
            high.append(i)
    out = []
    for kind, hits in (("vanishing", low), ("exploding", high)):
        if not hits:
            continue
        j = min(hits, key=lambda i: depth[i]) if kind == "vanishing" else max(hits, key=lambda i: depth[i])
        blocks = sorted({st.blocks[st.block_of[i]].name for i in hits})
        decades = depth[j]
        gain = _forward_gain(s, hits, judged)
        cause = Cause("init_too_small" if kind == "vanishing" else "init_too_large",
                      f"inside the branches the weights scale the signal by ~{10 ** gain:.2g}x "
                      "(median output/input RMS)" if np.isfinite(gain) else "the branch's layers scale the gradient",
                      {"forward_gain": 10 ** gain if np.isfinite(gain) else None}, abs(decades))
        acts = sorted({s.activations[i] for i in hits if s.activations[i] in SATURATING})
        causes = [cause] + ([Cause("saturating_activation", f"the branch layers are fed by {'/'.join(acts)}",
                                   {"activations": acts}, abs(decades) * 1.2)] if acts and kind == "vanishing" else [])
        # as along the depth axis: a symptom absent at the first recorded step that appeared while
        # training is blamed on the training first (the learning rate), whatever the weights' scale
        first = _finite_steps(s)[0]
        sign, limit = (-1, T.INNER_VANISH_DECADES) if kind == "vanishing" else (1, T.INNER_EXPLODE_DECADES)
        onset = appeared_in_training(s, sign * np.array([levels[i].decades[first] for i in hits]), limit)
        lr = _lr_cause(s, judged, onset) if s.n_steps > 1 else None
        causes += [lr] if lr is not None else []
        summary = (f"inside the branches of {len(blocks)} blocks, '{s.names[j]}' receives {10 ** decades:.3g}x the "
                   f"gradient entering its branch; {len(hits)} layers beyond {T.INNER_VANISH_DECADES:g} decades")
        evidence = {"decades": decades, "worst_layer": s.names[j], "worst_gain_layer": s.names[j],
                    "blocks": blocks, "inner_decades": {s.names[i]: depth[i] for i in hits}}
        severity = "critical" if abs(decades) > T.CRITICAL_DECADES + T.INNER_VANISH_DECADES else "warning"
        f = _finding(kind, severity, hits, s, summary, evidence, rank(causes))
        out.append(judge_impact(s, f, hits, judged) if kind == "vanishing" else f)
    return out
