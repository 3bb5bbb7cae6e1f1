"""The error signal per time step of recurrent layers (nn.RNN, nn.LSTM, nn.GRU).

Back-propagation through time multiplies the gradient by one Jacobian per step (Bengio,
Simard & Frasconi 1994), so what reaches early time steps can vanish or explode. Two series
per recurrent layer and recorded step, each a per-sample norm at every time step t:

- `time_input_grad`: ||dL/dx_t||, the gradient the layer passes down at step t. It is
  W_ih^T times the *total* gradient at step t, recurrent path included: the quantity that
  vanishes through time, and the one the diagnosis judges.
- `time_output_grad`: ||dL/dh_t|| of the output tensor, i.e. only what the layers above send
  to h_t directly. A fused nn.RNN/LSTM/GRU keeps its recurrence inside one autograd node, so
  this does not include the path through h_{t+1}: with a loss on the last step only it is 0
  for t < T whatever the recurrence does. Kept for reference (where the loss enters).

When the layer's input needs no gradient (raw data), a forward pre-hook hands the layer a
detached copy that requires one, on recorded steps only: same values, same parameter
gradients, plus one (B, T, input) gradient the backward computes; the probe's own
input_grad_rms of that layer stays nan, as for any raw input. PackedSequence inputs
and outputs are skipped (their time axis is packed away).

Each call's gradient is reduced at once to a vector of sums of squares over time steps and
filed as one row of slot time_input / time_output (slots.py: pooled, unscaled and reduced
across ranks like every other error signal).
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from .parts import Part
from .record import KEY, SLOT, RawStep
from .slots import INPUT_GRAD, TIME_INPUT, TIME_OUTPUT

# Dispatch: recurrent module class -> how to find its time axis (RNN, LSTM and GRU derive
# from RNNBase, whose `batch_first` says where time is). Other modules are not recurrent here.
RECURRENT: tuple[type[nn.Module], ...] = (nn.RNNBase,)
SLOT_OF = {"input": TIME_INPUT, "output": TIME_OUTPUT}
SERIES = {"input": "time_input_grad", "output": "time_output_grad"}  # kind -> Trace.series name


def is_recurrent(module: nn.Module) -> bool:
    """True for modules whose outputs have a time axis this file understands."""
    return isinstance(module, RECURRENT)


def time_axis(module: nn.Module, t: Tensor) -> int:
    """Time dimension of a recurrent layer's input or output: (B, T, F), (T, B, F) or unbatched (T, F)."""
    if t.dim() < 3:
        return 0
    return 1 if getattr(module, "batch_first", False) else 0


def batch_of(module: nn.Module, t: Tensor) -> int:
    """Number of sequences in a recurrent layer's input or output (1 when unbatched)."""
    if t.dim() < 3:
        return 1
    return t.shape[0 if getattr(module, "batch_first", False) else 1]


def per_step_sq(g: Tensor, axis: int) -> Tensor:
    """Sum of squares of g at each position along `axis`: shape (T,), float32 or wider."""
    g = g.float() if g.element_size() < 4 else g  # half/bfloat16: reduce in float32
    dims = [d for d in range(g.dim()) if d != axis]
    return torch.linalg.vector_norm(g, dim=dims).square() if dims else g.square()


class TimePart(Part):
    """Hooks on the recurrent layers, attached during recorded full steps only; one row per call."""

    def __init__(self, layout, modules: list[nn.Module], meta: dict) -> None:
        self.layout = layout
        self.modules = [m for m in modules if is_recurrent(m)]
        self._handles: list = []
        self._rec = None
        self.substituted: set[nn.Module] = set()  # layers handed a grad-requiring copy of their input
        meta["recurrent"] = {layout.names[m]: {"type": type(m).__name__, "bidirectional": m.bidirectional,
                                                     "batch_first": m.batch_first} for m in self.modules}

    def begin(self, rec, full: bool) -> None:
        self._rec, self.substituted = (rec if full else None), set()
        if self._rec is not None and not self._handles:
            for m in self.modules:
                self._handles += [m.register_forward_pre_hook(self._pre), m.register_forward_hook(self._post)]
        elif self._rec is None:
            self._detach()

    def _detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pre(self, module: nn.Module, args: tuple) -> tuple | None:
        if not args or not torch.is_grad_enabled():
            return None
        x = args[0]
        if isinstance(x, Tensor) and x.is_floating_point() and not x.requires_grad:
            self.substituted.add(module)
            return (x.detach().requires_grad_(), *args[1:])  # same values; its gradient is dL/dx_t
        return None

    def _post(self, module: nn.Module, args: tuple, out: object) -> None:
        if not torch.is_grad_enabled() or self._rec is None:
            return
        y = out[0] if isinstance(out, tuple) else out
        for kind, t in (("input", args[0] if args else None), ("output", y)):
            if isinstance(t, Tensor) and t.requires_grad and t.dim() >= 2:
                t.register_hook(partial(self._grad, self._rec, module, SLOT_OF[kind], time_axis(module, t),
                                        batch_of(module, t)))

    def _grad(self, rec, module: nn.Module, slot: int, axis: int, batch: int, g: Tensor) -> None:
        layer = self.layout.index.get(module)
        if rec.closed or layer is None:
            return
        v = per_step_sq(g.detach(), axis)  # reduced at once
        rec.file(slot, layer, batch, rec.append(v), len(v))

    def finish(self, step: int, raw: RawStep, token: object, own: np.ndarray) -> RawStep | None:
        """Without the input_grad rows of layers whose input needed no gradient by itself."""
        layers = [self.layout.index[m] for m in self.substituted if m in self.layout.index]
        if not layers:
            return raw
        t = raw.table()
        return raw.keep(~((t[:, SLOT] == INPUT_GRAD) & np.isin(t[:, KEY], layers)))

    def close(self, clean: bool = True) -> list:
        self._rec = None
        self._detach()
        return []
