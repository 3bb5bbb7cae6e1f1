"""What the probe does beyond its core, for real training set-ups: parts behind one interface.

- LossScalePart (amp.py): error signals divided by a GradScaler's loss scale; skipped steps left out.
- RanksPart (distributed.py): each recorded step combined across DDP ranks with one collective;
  ShardsPart (fsdp.py) the same under FSDP2, where parameter numbers are per-shard sums.
- TimePart (recurrent.py): the error signal per time step of recurrent layers, as Trace series.
- BlocksPart (blocks.py): the error signal at the output of each block (a transformer layer,
  a ResNet block), as model-level Trace series.

The Probe calls every part at the same points of each step, in the order of `make_parts`:
`begin` when a step begins, `forward` for each recorded layer call (parts with
`wants_forward`), `file` before the step's one host copy (device values go into the record,
with rows that say what they are, or as the part's own values), `finish` after it (the
part's own values are handed back, already cut from the step), and `release`/`close` for a
part that holds a step until its loss is known (DDP: the ranks meet once per step), and
`agree` at a clean close (DDP: the every-step checks after the last recorded step).
A new part is a subclass here and one line in `make_parts`.
"""
from __future__ import annotations

import numpy as np
from torch import Tensor

from .record import RawStep


class Part:
    """One concern beyond the core record; every method is a no-op unless overridden."""

    wants_forward = False  # forward() is called for each recorded layer call

    def begin(self, rec, full: bool) -> None:
        """A step begins; `rec` is its StepRecord if it is recorded (else None); full: stats='full'."""

    def forward(self, layer: int, x: Tensor | None) -> None:
        """One recorded forward call of a watched layer, with its first input."""

    def file(self, rec) -> object:
        """Before the host copy: append this part's device values; returns what finish() needs."""
        return None

    def finish(self, step: int, raw: RawStep, token: object, own: np.ndarray) -> RawStep | None:
        """After the host copy (`own`: the values this part appended, cut from raw); None: held."""
        return raw

    def holding(self, step: int) -> bool:
        """Does this part hold step `step` until its loss is known?"""
        return False

    def release(self, loss: Tensor | float | None = None) -> list[tuple[int, RawStep]]:
        """Hand over a held step (with `loss`, if given)."""
        return []

    def close(self, clean: bool = True) -> list[tuple[int, RawStep]]:
        """Remove hooks; hand over a held step unless the probe closes on an exception."""
        return [] if not clean else self.release()

    def agree(self, first: dict[int, int]) -> dict[int, int]:
        """At a clean close: the first non-finite step of each check slot, as all processes saw it."""
        return first


def make_parts(model, layout, meta: dict, stats: str, scaler: object | None, group: object | None,
               compiled: bool, blocks: object, sharded: bool = False) -> list[Part]:
    """The parts this set-up needs, in the order they see each step (the reduction across ranks last)."""
    from .amp import LossScalePart
    from .blocks import BlocksPart
    from .distributed import RanksPart, world_of
    from .fsdp import ShardsPart
    from .recurrent import TimePart, is_recurrent

    parts: list[Part] = []
    full = stats == "full" and not compiled
    recurrent = [m for m in layout.candidates() if is_recurrent(m)]
    if recurrent and full:
        parts.append(TimePart(layout, recurrent, meta))
    names = BlocksPart.resolve(model, blocks) if full else []
    if names:
        parts.append(BlocksPart(model, names, meta))
    if full:  # the structure (which layers feed which), learnt on the first recorded step: structure.py
        from .structure import StructurePart, find_blocks

        parts.append(StructurePart(model, layout, meta, names or find_blocks(model)))
    if scaler is not None:
        parts.append(LossScalePart(scaler, meta))
    if group is not None and world_of(group)[0] > 1:
        parts.append((ShardsPart if sharded else RanksPart)(group, meta))
    return parts
