"""One reusable buffer for the elementwise temporaries of the probe's reductions.

Most activation statistics need a temporary as large as the activation (|x|, sign(x), y - y,
phi'(y)). Freshly allocated, a temporary of a few MB is handed out by glibc as new pages
(mmap: each allocation of an equal size is mapped again), which the kernel faults in and
zeroes: on the 4 x 32-channel CNN benchmark (1.6 M-element activations) ~8,700 page faults
and ~4 ms per recorded step. Reusing one buffer pays that once per step. Small temporaries
come from the heap without faults and are allocated as usual.
"""
from __future__ import annotations

import torch
from torch import Tensor

MIN_NUMEL = 1 << 16  # smaller temporaries (< 256 kB of float32) are allocated fresh: no faults there


class Scratch:
    """Hands out temporaries shaped like a given tensor, all backed by one buffer per dtype and device.

    A temporary is valid until the next call: the probe's reductions use one at a time, in
    stream order (on a GPU too, where it merely saves the caching allocator some work).
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def like(self, t: Tensor) -> Tensor | None:
        """An uninitialised contiguous tensor with t's shape, dtype and device (None if t is small:
        pass it as `out=` and the kernel allocates, as usual)."""
        n = t.numel()
        if n < MIN_NUMEL:
            return None
        key = (t.dtype, t.device)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n:
            buf = self._buffers[key] = torch.empty(n, dtype=t.dtype, device=t.device)
        return buf[:n].view(t.shape)

    def clear(self) -> None:
        """Free the buffers (the record is done with activations: backward has started)."""
        self._buffers.clear()
