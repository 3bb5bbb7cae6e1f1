"""Every number the probe files, declared once: what it is, how it pools, how AMP and DDP treat it.

A *slot* is one kind of filed number (a gradient norm, an error-signal norm, a count of dead
units, ...). Each recorded step files rows (slot, key, count, value index, length): the key is
a layer (or a block, for block slots), the count is the number of elements (or samples) the
value summarises, the value sits in the step's fetched vector at `index` (ZERO: the number 0),
and `length` is 1 except for per-time-step slots, whose value is a vector over time steps.

The properties below are all that pooling (pooling.py), the loss-scale correction (amp.py)
and the cross-rank reduction (distributed.py) know about a slot; they never name one. A new
statistic is one `Slot(...)` line here, its metric name in trace.py's schema, and the code
that computes and files it (stats.py + collect.py).

form: how values add up within a step (a layer called twice, several ranks)
  "norm"     a norm: squared, then summed (sums of squares add)
  "sumsq"    already a sum of squares: summed
  "sum"      a count or a plain sum: summed
  "mean", "centred"  the mean and |x - mean| of one call, filed as a pair: Chan et al.'s formula
loss_scaled: filed during backward, so multiplied by a GradScaler's loss scale (divided out)
ranks: how DDP ranks combine
  "same"     replicas (parameters, DDP-averaged gradients): every rank has the same, take this one's
  "signal"   each rank's error signal of its shard: divided by the world size, then summed (squares)
  "add"      sums and counts over the samples: add
  "units"    dead units: a unit is dead when silent on every rank (per-unit masks, OR-ed)
axis: "layer" (a Trace metric), "block" (a model-level series over blocks), "time" (a per-layer
  series over time steps), "check" (the every-step non-finite checks, key = the step)
metrics: (name, denominator) pairs: metric = numerator sum / denominator, square-rooted for
  "norm" and "sumsq" forms; denominator "1", "n" (the slot's own count), a slot name (its sum)
  or "n:<slot>" (that slot's count)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .trace import LAYER_METRICS, STEP_METRICS

FORMS = ("norm", "sumsq", "sum", "mean", "centred")
RANKS = ("same", "signal", "add", "units")
AXES = ("layer", "block", "time", "check")
ZERO = -1  # value index meaning "the number 0" (e.g. the saturated count of a ReLU input)


@dataclass(frozen=True)
class Slot:
    """One kind of filed number and everything the probe's generic code needs to know about it."""

    name: str
    form: str  # see FORMS
    metrics: tuple[tuple[str, str], ...] = ()  # (metric, denominator)
    loss_scaled: bool = False
    ranks: str = "add"  # see RANKS
    axis: str = "layer"  # see AXES
    into: str | None = None  # pooled as part of this slot (two forms of one quantity)
    present: tuple[str, ...] = ()  # its metrics exist where these slots were filed (default: itself)

    @property
    def root(self) -> bool:
        """Its metrics are square roots (the pooled sum is a sum of squares)."""
        return self.form in ("norm", "sumsq")


SLOTS: tuple[Slot, ...] = (
    # parameters, read around the optimizer step: identical on every rank
    Slot("grad_w", "norm", (("grad_norm", "1"), ("grad_rms", "n")), ranks="same"),
    Slot("grad_b", "norm", (("bias_grad_norm", "1"),), ranks="same"),
    Slot("weight", "norm", (("weight_rms", "n"),), ranks="same"),
    Slot("change", "norm", (("update_ratio", "before"),), ranks="same"),
    Slot("before", "norm", ranks="same"),  # the weight norm before the step, for update_ratio
    Slot("grad_nonfinite", "sum", (("nonfinite_grad", "1"),), ranks="same", present=("grad_w", "grad_b")),
    Slot("grad_zero", "sum", (("grad_zero_frac", "n"),), ranks="same"),  # 16-bit runs only
    # error signals, caught during backward: loss-scaled, per rank
    Slot("delta", "norm", (("delta_rms", "n"),), loss_scaled=True, ranks="signal"),
    Slot("input_grad", "norm", (("input_grad_rms", "n"),), loss_scaled=True, ranks="signal"),
    # forward signals and activation statistics: sums over samples
    Slot("out", "norm", (("out_rms", "n"),)),
    Slot("out_nonfinite", "sum", (("nonfinite_act", "1"),)),
    Slot("act_mean", "mean", (("act_mean", "n"),)),
    Slot("act_centred", "centred", (("act_std", "n"),)),
    Slot("dead", "sum", (("dead", "n"),), ranks="units"),
    Slot("saturated", "sum", (("saturated", "n"),)),
    Slot("deriv_sq", "sumsq", (("act_deriv_rms", "n"),)),
    Slot("deriv", "norm", into="deriv_sq"),  # |phi'| where phi' is a tensor anyway: its square joins
    # blocks (containers: a transformer layer, a ResNet block): dL/d(block output)
    Slot("block_delta", "norm", (("block_delta_rms", "n"), ("block_delta_norm", "n:block_batch")),
         loss_scaled=True, ranks="signal", axis="block"),
    Slot("block_batch", "sum", axis="block"),  # samples per call: count only (value ZERO)
    # recurrent layers: sums of squares of the error signal at each time step (recurrent.py)
    Slot("time_input", "sumsq", (("time_input_grad", "n"),), loss_scaled=True, ranks="signal", axis="time"),
    Slot("time_output", "sumsq", (("time_output_grad", "n"),), loss_scaled=True, ranks="signal", axis="time"),
    # the every-step checks (checks.py): 0 or finite when fine, non-finite when not
    Slot("check_loss", "sum", axis="check"),
    Slot("check_grad", "sum", ranks="same", axis="check"),
    Slot("check_input", "sum", axis="check"),
)
INDEX = {s.name: i for i, s in enumerate(SLOTS)}
N_SLOTS = len(SLOTS)
(GRAD_W, GRAD_B, WEIGHT, CHANGE, BEFORE, GRAD_NONFINITE, GRAD_ZERO, DELTA, INPUT_GRAD, OUT, OUT_NONFINITE,
 ACT_MEAN, ACT_CENTRED, DEAD, SATURATED, DERIV_SQ, DERIV, BLOCK_DELTA, BLOCK_BATCH, TIME_INPUT, TIME_OUTPUT,
 CHECK_LOSS, CHECK_GRAD, CHECK_INPUT) = range(N_SLOTS)
# the step metric made of slots: the norm of every parameter gradient (layers' or not)
GLOBAL_GRAD = ("global_grad_norm", (GRAD_W, GRAD_B))
HOST_STEP_METRICS = ("loss", "lr")  # known on the host, not filed as device values


def mask(**props: object) -> np.ndarray:
    """Boolean array over slots: those whose properties equal `props` (e.g. mask(loss_scaled=True))."""
    return np.array([all(getattr(s, k) == v for k, v in props.items()) for s in SLOTS], dtype=bool)


def power() -> np.ndarray:
    """Per slot: the power of a factor that scales the underlying signal (1 for norms, 2 for sums of squares)."""
    return np.array([2 if s.form == "sumsq" else 1 for s in SLOTS], dtype=np.int64)


def _check() -> None:
    names = [s.name for s in SLOTS]
    assert len(set(names)) == len(names), "slot names must be unique"
    for s in SLOTS:
        assert s.form in FORMS and s.ranks in RANKS and s.axis in AXES, s
        assert s.into is None or SLOTS[INDEX[s.into]].root == s.root, s
        for metric, den in s.metrics:
            assert den in ("1", "n") or den.removeprefix("n:") in INDEX, (s.name, den)
            if s.axis == "layer":
                assert metric in LAYER_METRICS, f"{metric} (slot {s.name}) is not in trace.LAYER_METRICS"
    assert GLOBAL_GRAD[0] in STEP_METRICS and all(m in STEP_METRICS for m in HOST_STEP_METRICS)
    assert names.index("act_centred") == names.index("act_mean") + 1  # filed as a pair


_check()
