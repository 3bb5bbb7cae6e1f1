"""Pathologies planted in zoo architectures, each with a ground truth measured by plain autograd."""
from __future__ import annotations

from zoo_base import Planted

PLANTED: tuple[Planted, ...] = ()
