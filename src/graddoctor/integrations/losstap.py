"""LossTap: the loss of each optimizer step, taken from the backward calls of a loop graddoctor does not own.

The loss of a training step is what its backward differentiates: the sum of the scalar tensors
that `loss.backward()` / `torch.autograd.backward(loss)` is called on since the last optimizer
step (with gradient accumulation: the micro-batch losses, each already divided by the number
of micro-batches in the usual recipes, hence summed). `torch.autograd.backward` is wrapped for
the tap's lifetime (Tensor.backward calls it); only a scalar with no explicit gradient counts.
The values stay on the device (no host sync); a GradScaler's scale is divided out.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor


class LossTap:
    """Sum of the scalar losses backpropagated since the last `take()`; a context manager."""

    def __init__(self, scaler: object | None = None) -> None:
        self.scaler = scaler  # a torch.amp.GradScaler whose scale(loss) is what backward sees, or None
        self._sum: Tensor | None = None
        self._original = None
        self._active = False

    def take(self) -> Tensor | None:
        """The loss since the last take (None if no scalar was backpropagated), and reset."""
        out, self._sum = self._sum, None
        return out

    def add(self, loss: Tensor) -> None:
        """Count one backpropagated scalar (unscaled by the scaler's current scale)."""
        value = loss.detach().float().reshape(())
        scaler = self.scaler
        if scaler is not None and scaler.is_enabled() and getattr(scaler, "_scale", None) is not None:
            value = value / scaler._scale.reshape(()).to(value.device)
        self._sum = value if self._sum is None else self._sum + value.to(self._sum.device)

    def __enter__(self) -> LossTap:
        original = torch.autograd.backward
        tap = self

        @functools.wraps(original)
        def backward(tensors, grad_tensors=None, *args, **kwargs):
            if tap._active and grad_tensors is None and isinstance(tensors, Tensor) and tensors.numel() == 1:
                tap.add(tensors)
            return original(tensors, grad_tensors, *args, **kwargs)

        self._original, self._active = original, True
        torch.autograd.backward = backward
        self._wrapper = backward
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False  # if someone wrapped it after us, our wrapper stays but passes through
        if torch.autograd.backward is self._wrapper:
            torch.autograd.backward = self._original
