"""The error signal at each block's output: the depth axis of a real network, one number per block.

A block is a container module (a transformer layer, a ResNet block): its output is where the
residual stream or the chain of blocks carries the signal to the next one, so dL/d(block
output) along the blocks is the gradient along the network's depth axis. Per recorded step
(stats="full"), two model-level Trace series, one value per block in forward order
(`trace.meta["blocks"]` names them):

- `block_delta_rms`: per-element RMS of dL/d(block output), over all its calls in the step;
- `block_delta_norm`: its per-sample norm, sqrt(sum of squares / samples), dimension 0 the batch.

`watch(model, blocks="auto")` asks graddoctor.probe.structure.find_blocks(model); a list of
module names picks them by hand; None records none. No activation statistics on blocks: one
forward hook (a tensor hook on its output) and one norm per call.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..errors import GradDoctorError
from .parts import Part
from .slots import BLOCK_BATCH, BLOCK_DELTA, ZERO
from .stats import first_tensor


class BlocksPart(Part):
    """Forward hooks on the block modules during recorded full steps; a tensor hook on each output."""

    def __init__(self, model: nn.Module, names: list[str], meta: dict) -> None:
        mods = dict(model.named_modules())
        self.modules = [mods[n] for n in names]
        self.names = {mods[n]: n for n in reversed(names)}  # a module listed twice keeps its first name
        self.order: dict[nn.Module, int] = {}  # block -> position in forward order (first call)
        self.meta = meta
        self._handles: list = []
        self._rec = None

    @staticmethod
    def resolve(model: nn.Module, blocks: object) -> list[str]:
        """The block names to watch for blocks="auto" | None | [names] (a clear error for unknown names)."""
        if blocks is None:
            return []
        if isinstance(blocks, str) and blocks == "auto":
            from .structure import find_blocks

            return list(find_blocks(model))
        if isinstance(blocks, str) or not all(isinstance(b, str) for b in blocks):
            raise GradDoctorError(f"blocks must be 'auto', None or a list of module names, got {blocks!r}")
        known = dict(model.named_modules())
        missing = [b for b in blocks if b not in known]
        if missing:
            sample = ", ".join(repr(n) for n, m in known.items() if n and list(m.children()))[:300]
            raise GradDoctorError(f"blocks: no module named {missing[0]!r} in {type(model).__name__}; "
                                  f"use names from model.named_modules(), e.g. {sample}")
        return list(dict.fromkeys(blocks))

    def begin(self, rec, full: bool) -> None:
        self._rec = rec if full else None
        if self._rec is not None and not self._handles:
            self._handles = [m.register_forward_hook(self._on_forward) for m in self.modules]
        elif self._rec is None:
            self._detach()

    def _detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _on_forward(self, module: nn.Module, args: tuple, out: object) -> None:
        rec = self._rec
        y = first_tensor(out)
        if rec is None or y is None or not y.requires_grad or not torch.is_grad_enabled():
            return
        block = self.order.get(module)
        if block is None:
            block = self.order[module] = len(self.order)
            self.meta["blocks"].append(self.names[module])
        rec.file(BLOCK_BATCH, block, y.shape[0] if y.dim() else 1, ZERO)  # samples of this call
        y.register_hook(partial(rec.signal, block, BLOCK_DELTA))

    def close(self, clean: bool = True) -> list:
        self._rec = None
        self._detach()
        return []
