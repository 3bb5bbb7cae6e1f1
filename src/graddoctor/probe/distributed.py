"""DistributedDataParallel: make each rank's recorded step that of the global batch, with one collective.

Under DDP every rank runs the model on its own shard of the batch. What the probe measures
combines across ranks as each slot's `ranks` property says (slots.py):

- "same": parameter gradients, weights, update norms: DDP has already averaged the gradients,
  and the weights are replicas, so these are identical on every rank: taken as they are.
- "signal": error signals (per layer, per block, per time step): each rank's loss is the mean
  over its shard, while DDP applies the average of the ranks' gradients, i.e. the gradient of
  (1/W) sum_r L_r. The signal of that loss is each rank's signal divided by W (W = world
  size), and its squared norm over the global batch is the sum over ranks:
  sqrt(sum_r |g_r|^2 / W^2). Equal shards: exactly the mean loss over the concatenated batch.
- "add": output norms, non-finite counts, saturated counts, sums of phi'^2, activation mean
  and std, the every-step checks: sums, counts and centred moments over the samples, which
  add exactly across ranks (the ranks are more calls; pooling combines calls anyway).
- "units": dead units (zero for every sample of the GLOBAL batch) do not follow from per-rank
  counts: a unit can be silent on one shard and fire on another. Each rank keeps a per-unit
  "fired" mask per call; the masks are OR-ed across ranks (bit-packed: units / 8 bytes each).
- the loss: the mean over ranks (the loss whose gradient DDP applies).

Under FSDP2 (fsdp.py: ShardsPart) the "same" slots are sums over each rank's parameter shard
instead, combined like "add"; everything else is as above.

Everything travels in one `all_gather` of a byte buffer per recorded step (none per layer),
after the step's one host copy. The every-step non-finite checks of the steps after the last
recorded one ride in no step: at a clean close the ranks agree on the first bad step of each
kind with one `all_reduce(MIN)` of three integers (`agree`), so every rank's
`trace.meta["nonfinite"]` is the global one (not on a close by exception: the other ranks
may never reach a collective then). The ranks must record the same layers in the same order
(as DDP itself requires), with equal sequence lengths for recurrent series; a fingerprint of
the layout is checked on receipt.
"""
from __future__ import annotations

import time
import zlib

import numpy as np
import torch
from torch import Tensor

from ..errors import GradDoctorError
from .parts import Part
from .record import COUNT, INDEX, KEY, LENGTH, SLOT, RawStep
from .slots import CHECK_GRAD, CHECK_INPUT, CHECK_LOSS, DEAD, ZERO, mask

SAME, SIGNAL, UNITS = mask(ranks="same"), mask(ranks="signal"), mask(ranks="units")
_HEAD = 8  # header floats: fingerprint, n values, n rows, mask bits, loss, spare x3


def world_of(group: object | None) -> tuple[int, int]:
    """(world size, rank) of a process group (1, 0 without torch.distributed)."""
    import torch.distributed as dist

    if group is None or not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def is_main() -> bool:
    """True on the process that writes stores and reports: global rank 0, or no torch.distributed."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class RanksPart(Part):
    """Gathers each recorded step's numbers from every rank of `group` and combines them."""

    wants_forward = True
    sharded = False  # True (fsdp.py): parameter slots are per-rank shards that add, not replicas

    def __init__(self, group: object, meta: dict) -> None:
        self.group = group
        self.world, self.rank = world_of(group)
        self._masks: list[tuple[int, Tensor]] = []  # (layer, per-unit fired mask) per forward call
        self._held: tuple[int, RawStep, list, np.ndarray] | None = None  # a step waiting for its loss
        self.seconds = 0.0  # time spent in reduce() (packing, the collective, unpacking)
        self.calls = 0
        self.nbytes = 0  # bytes this rank sent in the last reduction
        meta["world_size"] = self.world

    def begin(self, rec, full: bool) -> None:
        self._masks = []

    def forward(self, layer: int, x: Tensor | None) -> None:
        """Keep which units of this call's input fired (nonzero for some sample of the shard)."""
        if x is None or not x.is_floating_point() or not x.numel():
            return
        with torch.no_grad():
            flat = x.reshape(x.shape[0], -1) if x.dim() else x.reshape(1, 1)
            self._masks.append((layer, flat.ne(0).any(0)))

    def file(self, rec) -> object:
        masks, self._masks = self._masks, []
        if masks:
            rec.append(torch.cat([m.float() for _, m in masks]))
        return [(layer, len(m)) for layer, m in masks]

    def finish(self, step: int, raw: RawStep, token: object, own: np.ndarray) -> RawStep | None:
        self._held = (step, raw, token, own)
        return self.release(raw.loss)[0][1] if raw.loss is not None else None

    def holding(self, step: int) -> bool:
        return self._held is not None and self._held[0] == step

    def release(self, loss: Tensor | float | None = None) -> list[tuple[int, RawStep]]:
        """Reduce the waiting step across ranks (with `loss`, if given): one collective."""
        if self._held is None:
            return []
        step, raw, units, fired = self._held
        self._held = None
        if loss is not None:
            raw.loss = float(loss.detach() if isinstance(loss, Tensor) else loss)
        return [(step, self.reduce(raw, units, fired))]

    def close(self, clean: bool = True) -> list[tuple[int, RawStep]]:
        if not clean:
            self._held = None  # other ranks may not reach a collective now
        return self.release()

    def agree(self, first: dict[int, int]) -> dict[int, int]:
        """The first non-finite step of each check slot over all ranks: one all_reduce(MIN) of three integers."""
        import torch.distributed as dist

        slots, none = (CHECK_LOSS, CHECK_GRAD, CHECK_INPUT), np.iinfo(np.int64).max
        steps = torch.tensor([first.get(s, none) for s in slots], dtype=torch.int64, device=self._device())
        dist.all_reduce(steps, op=dist.ReduceOp.MIN, group=self.group)
        return {s: int(v) for s, v in zip(slots, steps.tolist()) if v != none}

    def _device(self) -> torch.device:
        import torch.distributed as dist

        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def reduce(self, raw: RawStep, units: list[tuple[int, int]], fired: np.ndarray) -> RawStep:
        """The global step: this rank's RawStep and fired masks -> combined over ranks."""
        import torch.distributed as dist

        t0 = time.perf_counter()
        table = raw.table()
        slot = table[:, SLOT]
        act = ~UNITS[slot] if self.sharded else ~SAME[slot] & ~UNITS[slot]  # rows each rank files for its own part
        shape = (table[:, [SLOT, KEY, INDEX, LENGTH]], np.array(units, np.int64).reshape(-1, 2))
        finger = zlib.crc32(b"".join(a.tobytes() for a in shape))
        loss = np.nan if raw.loss is None else float(raw.loss)
        head = np.array([finger, len(raw.values), act.sum(), len(fired), loss, 0, 0, 0])
        floats = np.concatenate([head, raw.values, table[act, COUNT]]).astype(np.float64)
        buf = np.concatenate([floats.view(np.uint8), np.packbits(fired.astype(bool))])
        self.nbytes = len(buf)
        local = torch.from_numpy(buf).to(self._device())
        gathered = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(gathered, local, group=self.group)  # the one collective of the step
        out = self._combine(raw, table, act, units, [g.cpu().numpy() for g in gathered], len(floats))
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out

    def _combine(self, raw: RawStep, table: np.ndarray, act: np.ndarray, units: list[tuple[int, int]],
                 bufs: list[np.ndarray], n_floats: int) -> RawStep:
        """Union of the ranks' own-shard rows, this rank's replica rows, OR-ed dead-unit masks."""
        n, w, n_act = len(raw.values), self.world, int(act.sum())
        parts = [b[: n_floats * 8].view(np.float64) for b in bufs]
        if any(len(b) != len(bufs[0]) or p[0] != parts[0][0] for b, p in zip(bufs, parts)):
            raise GradDoctorError("the ranks recorded different layers in this step (different modules ran, "
                                  "or sequences of different lengths); graddoctor's DDP reduction needs every "
                                  "rank to run the same layers: pad sequences to one length per step")
        acts = table[act]
        values, rows = [], [table[~act & ~UNITS[table[:, SLOT]]]]  # replicas: this rank's (rank 0's block)
        for r, p in enumerate(parts):  # rank r's values sit at offset r * n
            v = RawStep(p[_HEAD: _HEAD + n].copy(), chunks=[table]).scaled(SIGNAL, 1.0 / w).values
            values.append(v)
            block = acts.copy()
            block[:, COUNT] = p[_HEAD + n: _HEAD + n + n_act]
            block[:, INDEX] = np.where(block[:, INDEX] == ZERO, ZERO, block[:, INDEX] + r * n)
            rows.append(block)
        bits = sum(u for _, u in units)
        fired = np.zeros(bits, bool)
        for b in bufs:
            fired |= np.unpackbits(b[n_floats * 8:], count=bits).astype(bool)
        bounds = np.cumsum([0] + [u for _, u in units])
        dead = [u - int(fired[bounds[k]: bounds[k + 1]].sum()) for k, (_, u) in enumerate(units)]
        rows.append(np.array([[DEAD, layer, u, w * n + k, 1] for k, (layer, u) in enumerate(units)],
                             np.int64).reshape(-1, 5))  # one row per call: units silent on every rank
        loss = None if raw.loss is None else float(np.mean([p[4] for p in parts]))
        return RawStep(np.concatenate(values + [np.array(dead, float)]), [], rows, loss, raw.host, raw.recorded)
