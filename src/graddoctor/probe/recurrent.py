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
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

# Dispatch: recurrent module class -> how to find its time axis (RNN, LSTM and GRU derive
# from RNNBase, whose `batch_first` says where time is). Other modules are not recurrent here.
RECURRENT: tuple[type[nn.Module], ...] = (nn.RNNBase,)
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


def pool_calls(calls: list[tuple[str, str, int, np.ndarray]]) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """(kind, layer, batch, sums of squares (T,)) per call -> (kind, layer): (sums, sequences) per t.

    A layer called twice in a step pools both calls position by position (as the probe pools
    every metric), so sequences of different lengths add where both have a step t.
    """
    out: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for kind, layer, batch, sq in calls:
        s, n = out.get((kind, layer), (np.zeros(0), np.zeros(0)))
        width = max(len(s), len(sq))
        s, n = np.pad(s, (0, width - len(s))), np.pad(n, (0, width - len(n)))
        s[: len(sq)] += sq
        n[: len(sq)] += batch
        out[(kind, layer)] = (s, n)
    return out


def per_sample_norm(sums: np.ndarray, sequences: np.ndarray) -> np.ndarray:
    """sqrt(sum of squares / sequences) at each t: the per-sample norm the series store."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(sums / sequences)


class TimeRecorder:
    """Hooks on the recurrent layers, attached during recorded steps only; one step's norms per t."""

    def __init__(self, names: dict[nn.Module, str], modules: list[nn.Module]) -> None:
        self.names = names
        self.modules = [m for m in modules if is_recurrent(m)]
        self._handles: list = []
        self._pending: list[tuple[str, str, int, Tensor]] = []  # (kind, layer, batch, (T,) device)
        self.substituted: set[nn.Module] = set()  # layers handed a grad-requiring copy of their input
        self.closed = False

    def attach(self) -> None:
        """Hook every recurrent layer (no-op if attached)."""
        if not self._handles:
            for m in self.modules:
                self._handles += [m.register_forward_pre_hook(self._pre), m.register_forward_hook(self._post)]

    def detach(self) -> None:
        """Remove the hooks."""
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
        if not torch.is_grad_enabled() or self.closed:
            return
        name = self.names[module]
        y = out[0] if isinstance(out, tuple) else out
        for kind, t in (("input", args[0] if args else None), ("output", y)):
            if isinstance(t, Tensor) and t.requires_grad and t.dim() >= 2:
                t.register_hook(partial(self._grad, kind, name, time_axis(module, t), batch_of(module, t)))

    def _grad(self, kind: str, name: str, axis: int, batch: int, g: Tensor) -> None:
        if not self.closed:
            self._pending.append((kind, name, batch, per_step_sq(g.detach(), axis)))  # reduced at once

    def take(self) -> tuple[list[tuple[str, str, int, int]], list[Tensor]]:
        """This step's calls as (kind, layer, batch, length) and their (T,) device tensors; resets."""
        pending, self._pending = self._pending, []
        return [(k, n, b, len(v)) for k, n, b, v in pending], [v for *_, v in pending]

    def reset(self) -> None:
        """Forget what a step that will not be recorded left behind (e.g. a backward that raised)."""
        self._pending = []
        self.substituted = set()
