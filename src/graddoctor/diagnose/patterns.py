"""Pure: patterns that look like a vanishing gradient but are the design, recognised with their evidence.

Each returns `by_design` findings of severity info (never a disease), with the numbers that
identify the pattern:
- a branch that enters the residual stream scaled down (LayerScale, a small residual scale):
  its layers receive `scale x` the stream's gradient (Touvron et al. 2021, "Going deeper with
  image transformers"); Adam's steps do not depend on that scale;
- layers initialised to zero (a classification head, LoRA's B, zero-init last norms): at
  step 0 no gradient passes below them; from step 1 on it does;
- attention Q/K at initialisation: with near-uniform attention (scores ~ q.k/sqrt(d) close
  to 0) the softmax's Jacobian is small, so dL/d(query), dL/d(key) sit far below dL/d(value);
  it changes as the attention sharpens.
(Normalisation growth along a residual stream is recognised by depth.along_depth.)
"""
from __future__ import annotations

import numpy as np

from . import thresholds as T
from .depth import branch_levels, stacks
from .evidence import _finding, _judged
from .findings import Finding
from .signals import Signals, median


def _fmt(x: float) -> str:
    return f"{x:.2g}"


def branch_scale(s: Signals) -> list[Finding]:
    """Branches whose exit signal sits far below the block output's: a scale on the branch, by design."""
    if not stacks(s):
        return []
    judged = _judged(s)
    st = s.structure
    levels = branch_levels(s)  # an exit of a residual block's branch: against the block's output
    rows = []  # (block, exit decades)
    for b in st.blocks:
        for br in b.branches:
            rel = [float(np.nanmedian(levels[i].decades[judged])) for i in br.exits if i in levels]
            rel = [d for d in rel if np.isfinite(d)]
            if rel and max(rel) < -T.BRANCH_SCALE_DECADES:
                rows.append((b, max(rel)))
    if not rows:
        return []
    w = median(s.layer["weight_rms"], judged)
    scales = []
    for b, _ in rows:  # a LayerScale held by the block itself, or a scale layer (1-D parameters) in it
        cands = [b.self_layer] if b.self_layer >= 0 else []
        cands += [i for i in b.layers if not st.is_weight(i) and not st.is_norm(i)]
        cands = [i for i in cands if np.isfinite(w[i])]
        if cands:
            scales.append(min(cands, key=lambda i: w[i]))
    d = float(np.median([r[1] for r in rows]))
    zero = d < -100
    names = sorted({s.names[i] for i in scales})
    more = f" and {len(names) - 2} more" if len(names) > 2 else ""
    where = f" ({', '.join(repr(n) for n in names[:2])}{more}: RMS " \
            f"{_fmt(float(np.median(w[scales])))})" if scales else " (a scale applied before the residual add)"
    what = ("start at zero" if zero else f"enter the residual stream scaled by ~{_fmt(10 ** d)}")
    summary = (f"branches of {len(rows)} blocks {what}{where}: their layers receive "
               f"{'no' if zero else _fmt(10 ** d) + 'x the'} gradient of the stream by design "
               "(LayerScale, Touvron et al. 2021); Adam-type steps do not depend on it, and the scale learns")
    evidence = {"pattern": "branch_scale", "exit_decades": d, "blocks": [b.name for b, _ in rows],
                "scale_layers": names, "scale_rms": float(np.median(w[scales])) if scales else None}
    return [_finding("by_design", "info", [], s, summary, evidence, [])]


def zero_init(s: Signals) -> list[Finding]:
    """Layers whose weights are exactly zero at the first recorded step (at step 0)."""
    if not s.n_steps or int(s.steps[0]) != 0:
        return []
    w = s.layer["weight_rms"][0]
    zero = [i for i in range(len(s.names)) if w[i] == 0]
    if not zero:
        return []
    below = int(np.sum(s.log_rms[0] < -250))  # exact zeros (log10 floor)
    if below == 0:  # zero-initialised but in nobody's way (a Gemma (1 + w) norm, an unused token)
        return []
    later = s.layer["weight_rms"][1:, zero] if s.n_steps > 1 else np.zeros((0, len(zero)))
    moved = bool(len(later) and (later > 0).any())
    summary = (f"{len(zero)} layer(s) start at zero ({', '.join(repr(s.names[i]) for i in zero[:3])}): at step 0 "
               f"no gradient passes below them ({below} layers got exactly 0); "
               + ("from step 1 on it flows" if moved or s.n_steps == 1 else "they have not moved since"))
    evidence = {"pattern": "zero_init", "layers": [s.names[i] for i in zero], "layers_with_zero_signal": below,
                "moved": moved}
    return [_finding("by_design", "info", zero, s, summary, evidence, [])]


def qk_levels(s: Signals, judged: np.ndarray) -> dict[int, dict[int, tuple[str, float]]]:
    """Per attention consumer: its Q/K producers' signal against its strongest value producer's, decades.

    {consumer: {q_or_k: (the value projection's name, median log10 RMS ratio over the judged steps)}}.
    """
    st = s.structure
    if st is None or not st.score_side:
        return {}
    lr = median(s.log_rms, judged)
    out: dict[int, dict[int, tuple[str, float]]] = {}
    for c in sorted({c for p, c in st.edges if p in st.score_side}):
        qk = [p for p, b in st.edges if b == c and p in st.score_side and np.isfinite(lr[p])]
        v = [p for p, b in st.edges if b == c and p not in st.score_side and st.is_weight(p) and np.isfinite(lr[p])]
        if qk and v:
            top = max(v, key=lambda p: lr[p])
            out[c] = {p: (s.names[top], float(lr[p] - lr[top])) for p in sorted(qk)}
    return out


def attention_qk(s: Signals) -> list[Finding]:
    """Q/K projections far below V (the other inputs of the same consumer): near-uniform attention at init."""
    judged = _judged(s)
    levels = qk_levels(s, judged)
    gaps = [float(np.median([d for _, d in qk.values()])) for qk in levels.values()]
    qk_all = {p for qk in levels.values() for p in qk}
    if not gaps or np.median(gaps) > -T.QK_BELOW_V_DECADES:
        return []
    gap = float(np.median(gaps))
    out_rms = median(s.layer["out_rms"], judged)[sorted(qk_all)]
    score = float(np.nanmedian(out_rms)) ** 2 if np.isfinite(out_rms).any() else float("nan")
    why = (f"the scores are small (RMS ~{_fmt(score)}), so the softmax is near uniform and passes little gradient "
           "to Q and K; this changes as the attention sharpens" if score < 0.3 else
           "the softmax passes Q and K only the part of the gradient that changes the attention pattern")
    summary = (f"attention: dL/d(query), dL/d(key) are ~{_fmt(10 ** gap)}x dL/d(value) in {len(gaps)} attention "
               f"layers: {why}")
    evidence = {"pattern": "attention_qk", "qk_below_v_decades": gap, "attention_layers": len(gaps),
                "score_rms_estimate": score, "layers": sorted(s.names[i] for i in qk_all)[:8]}
    return [_finding("by_design", "info", [], s, summary, evidence, [])]


def disconnected(s: Signals) -> list[Finding]:
    """Layers whose weight gradient is exactly zero on every judged step while others' are not."""
    judged = _judged(s)
    if not len(judged):
        return []
    g = s.layer["grad_rms"][judged]
    zero = [i for i in range(len(s.names)) if np.isfinite(g[:, i]).all() and (g[:, i] == 0).all()]
    if not zero or len(zero) > 0.1 * len(s.names) or not (np.nan_to_num(g) > 0).any():
        return []  # many zero layers: a signal that died on the way (the gradient rules' business)
    summary = (f"no gradient reaches {len(zero)} layer(s) ({', '.join(repr(s.names[i]) for i in zero[:3])}): "
               "their output does not affect the loss in this set-up (e.g. a pooling token mixer at 1x1 "
               "resolution, an unused head); nothing about the gradient's flow elsewhere")
    return [_finding("by_design", "info", zero, s, summary, {"pattern": "disconnected",
                                                              "layers": [s.names[i] for i in zero]}, [])]


def not_comparable(s: Signals) -> list[Finding]:
    """Layers left out of a chain's comparison whose signal would have crossed a threshold, and why."""
    st = s.structure
    if st is None or stacks(s) or not st.other_lead:
        return []
    judged = _judged(s)
    rel = median(s.rel, judged)
    out = [i for i in sorted(st.other_lead) if np.isfinite(rel[i]) and
           (rel[i] < -T.VANISH_DECADES or rel[i] > T.EXPLODE_DECADES)]
    if not out:
        return []
    summary = (f"not compared along the chain: {', '.join(repr(s.names[i]) for i in out[:3])} — their output's "
               "first dimension is not the batch (shared by the samples, e.g. a position embedding of shape "
               "(1, T, d), or folded windows), so their error signal sums or splits the samples' and its "
               "per-sample size is not comparable")
    evidence = {"pattern": "not_comparable", "signal_decades": {s.names[i]: float(rel[i]) for i in out}}
    return [_finding("by_design", "info", out, s, summary, evidence, [])]


PATTERNS = (branch_scale, zero_init, attention_qk, disconnected, not_comparable)
