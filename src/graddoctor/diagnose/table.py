"""The one cause -> remedy table: what each cause means and which remedies answer it, ranked.

Read by the rules (`Finding.remedies`), by the through-time rule and by `treat` (which
expands a family name into its variants). A remedy is named by its label
("tune_optimizer(lr/10)") or by its family ("reinit": every variant, in registry order);
tests/test_table.py checks that every cause has an entry and every name is a real remedy.
This module is pure data: it imports nothing from graddoctor.remedies (no import cycle).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .thresholds import UPDATE_RATIO_TYPICAL


@dataclass(frozen=True)
class CauseEntry:
    """One cause: a one-line meaning for people and its remedies, most direct first."""

    meaning: str
    remedies: tuple[str, ...]


TABLE: dict[str, CauseEntry] = {
    "saturating_activation": CauseEntry(
        "sigmoid/tanh units sit where their derivative is small, so each layer multiplies the signal down",
        ("swap_activation", "add_norm", "add_residual")),
    "chain_product_depth": CauseEntry(
        "many per-layer factors slightly off 1 multiply to a large change over the depth",
        ("add_residual", "add_norm", "reinit", "zero_init_norms", "layer_scale")),
    "init_too_small": CauseEntry(
        "the initial weights are too small for the signal to keep its size through each layer",
        ("reinit", "reinit(library)", "reset_norms", "reinit(orthogonal)", "add_norm")),
    "init_too_large": CauseEntry(
        "the initial weights are too large: the signal grows through each layer",
        ("reinit", "reinit(library)", "scale_branches", "add_norm", "clip_gradients", "layer_scale")),
    "learning_rate_too_high": CauseEntry(
        "the optimizer's steps are too large: the weights and gradients grow while training",
        ("tune_optimizer(lr/10)", "tune_optimizer(lr/100)", "clip_gradients", "warmup")),
    "learning_rate_too_low": CauseEntry(
        "the optimizer's steps are too small for the weights to move",
        ("tune_optimizer(lr*10)", "tune_optimizer(momentum)")),
    "dead_relu": CauseEntry(
        "ReLU units that output 0 for every sample pass no gradient",
        ("swap_activation(leaky_relu)", "swap_activation(prelu)", "reinit", "tune_optimizer(lr/10)")),
    "input_scale": CauseEntry(
        "the inputs are not standardised (std or mean far from 1 and 0)",
        ("normalize_inputs", "add_norm")),
    "recurrent_chain": CauseEntry(
        "through time the gradient is a product of one Jacobian per step",
        ("clip_gradients",)),
    "non_finite_input": CauseEntry(
        "the input batch itself holds NaN/Inf values: clean or filter the data (no change to the model helps)",
        ()),
    "non_finite_forward": CauseEntry(
        "a forward operation produced the first NaN/Inf (an overflow, log(0), 0/0): the module is named",
        ("bf16", "tune_optimizer(lr/10)", "clip_gradients", "warmup")),  # bf16: float16's range overflowed
    "precision_underflow": CauseEntry(
        "16-bit gradients below the smallest float16 became exactly 0: scale the loss (GradScaler) or use bfloat16",
        ("loss_scale", "bf16")),
}


_LR_CUT = re.compile(r"\(lr/(\d+)\)")


def remedies_of(cause) -> tuple[str, ...]:
    """One cause's remedies (a `Cause`, or any object with `.name` and `.evidence`), most direct first.

    For a learning rate too high, the cuts (lr/10, lr/100) come nearest first: the one that
    brings the measured 90th-percentile update/weight ratio (evidence `update_ratio_p90`)
    closest to the typical UPDATE_RATIO_TYPICAL, in decades (GPT-2 at lr x100 measures 0.09:
    lr/100 first). Without that number, the table's order.
    """
    entry = TABLE.get(cause.name)
    if entry is None:
        return ()
    ratio = (getattr(cause, "evidence", None) or {}).get("update_ratio_p90")
    if cause.name != "learning_rate_too_high" or not isinstance(ratio, float) or not ratio > 0 \
            or not math.isfinite(ratio):
        return entry.remedies
    excess = math.log10(ratio / UPDATE_RATIO_TYPICAL)  # decades too large
    cuts = iter(sorted((r for r in entry.remedies if _LR_CUT.search(r)),
                       key=lambda r: abs(excess - math.log10(int(_LR_CUT.search(r).group(1))))))
    return tuple(next(cuts) if _LR_CUT.search(r) else r for r in entry.remedies)


def remedies_for(causes) -> tuple[str, ...]:
    """Remedy names in the order of the ranked causes (see remedies_of), without repeats."""
    return tuple(dict.fromkeys(r for c in causes for r in remedies_of(c)))
