"""The network's structure as the probe needs it: which modules are blocks (owned by the diagnosis work).

Stub until the structure recorder lands: no blocks found, so watch(blocks="auto") records none.
"""
from __future__ import annotations

from torch import nn


def find_blocks(model: nn.Module) -> list[str]:
    """Qualified names of the model's blocks (containers along its depth axis), in forward order."""
    return []
