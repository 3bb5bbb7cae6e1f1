"""DistributedDataParallel: make each rank's recorded step that of the global batch, with one collective.

Under DDP every rank runs the model on its own shard of the batch. What the probe measures
combines across ranks as follows (slots of pooling.py):

- parameter gradients, weights, update norms (grad_w, grad_b, weight, change, before,
  grad_nonfinite): DDP has already averaged the gradients, and the weights are replicas, so
  these are identical on every rank: taken as they are.
- error signals dL/d(output), dL/d(input) (delta, input_grad) and the per-time-step series:
  each rank's loss is the mean over its shard, while DDP applies the average of the ranks'
  gradients, i.e. the gradient of (1/W) sum_r L_r. The signal of that loss is each rank's
  signal divided by W (W = world size), and its squared norm over the global batch is the sum
  over ranks: sqrt(sum_r |g_r|^2 / W^2). Equal shards: exactly the mean loss over the
  concatenated batch.
- output norms, non-finite counts, saturated counts, sums of phi'^2, activation mean and std:
  sums, counts and centred moments over the samples, which add exactly across ranks (the
  pooling already combines calls with Chan's formula; the ranks are more calls).
- dead units (zero for every sample of the GLOBAL batch) do not follow from per-rank counts:
  a unit can be silent on one shard and fire on another. Each rank keeps a per-unit "fired"
  mask per call; the masks are OR-ed across ranks (bit-packed: units / 8 bytes each).
- the loss: the mean over ranks (the loss whose gradient DDP applies).

Everything travels in one `all_gather` of a byte buffer per recorded step (none per layer),
after the step's one host copy. The ranks must record the same layers in the same order
(as DDP itself requires), with equal sequence lengths for recurrent series; a fingerprint of
the layout is checked on receipt.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import Tensor

from ..errors import GradDoctorError
from .pooling import BEFORE, CHANGE, DEAD, DELTA, GRAD_B, GRAD_NONFINITE, GRAD_W, INPUT_GRAD, WEIGHT, ZERO, RawStep

PARAM_SLOTS = (GRAD_W, GRAD_B, WEIGHT, CHANGE, BEFORE, GRAD_NONFINITE)  # identical on every rank
SIGNAL_SLOTS = (DELTA, INPUT_GRAD)  # per-rank error signals: scaled by 1/W, then summed in squares
_HEAD = 8  # header floats: fingerprint, n values, n rows, n calls, mask bits, n series, loss, spare


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


def _table(raw: RawStep) -> np.ndarray:
    return np.concatenate([np.array(raw.rows, dtype=np.int64).reshape(-1, 4)] + list(raw.chunks))


class Reducer:
    """Gathers each recorded step's numbers from every rank of `group` and combines them."""

    def __init__(self, group: object) -> None:
        self.group = group
        self.world, self.rank = world_of(group)
        self._masks: list[tuple[int, Tensor]] = []  # (layer, per-unit fired mask) per forward call
        self.seconds = 0.0  # time spent in reduce() (packing, the collective, unpacking)
        self.calls = 0

    def forward(self, layer: int, x: Tensor | None) -> None:
        """Keep which units of this call's input fired (nonzero for some sample of the shard)."""
        if x is None or not x.is_floating_point() or not x.numel():
            return
        with torch.no_grad():
            flat = x.reshape(x.shape[0], -1) if x.dim() else x.reshape(1, 1)
            self._masks.append((layer, flat.ne(0).any(0)))

    def take(self) -> tuple[list[tuple[int, int]], list[Tensor]]:
        """This step's (layer, units) per call and the masks as float vectors; resets."""
        masks, self._masks = self._masks, []
        return [(layer, len(m)) for layer, m in masks], [m.float() for _, m in masks]

    def reset(self) -> None:
        """Forget a step that will not be recorded."""
        self._masks = []

    def _device(self) -> torch.device:
        import torch.distributed as dist

        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def reduce(self, raw: RawStep, units: list[tuple[int, int]], fired: np.ndarray,
               series: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]
               ) -> tuple[RawStep, dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]]:
        """The global step: this rank's RawStep, fired masks and series sums -> combined over ranks."""
        import time

        import torch.distributed as dist

        t0 = time.perf_counter()
        table = _table(raw)
        calls = np.array(raw.calls, dtype=np.int64).reshape(-1, 4)
        act = ~np.isin(table[:, 0], PARAM_SLOTS + (DEAD,))
        keys = sorted(series)
        sums = np.concatenate([series[k][0] for k in keys] + [np.zeros(0)])
        counts = np.concatenate([series[k][1] for k in keys] + [np.zeros(0)])
        shape = (table[:, [0, 1, 3]], calls[:, [0, 2, 3]], np.array(units, np.int64).reshape(-1, 2),
                 np.array([len(series[k][0]) for k in keys], np.int64))
        finger = zlib.crc32(b"".join(a.tobytes() for a in shape) + repr(keys).encode())
        loss = np.nan if raw.loss is None else float(raw.loss)
        head = np.array([finger, len(raw.values), act.sum(), len(calls), len(fired), len(sums), loss, 0.0])
        floats = np.concatenate([head, raw.values, table[act, 2], calls[:, 1], sums, counts]).astype(np.float64)
        buf = np.concatenate([floats.view(np.uint8), np.packbits(fired.astype(bool))])
        local = torch.from_numpy(buf).to(self._device())
        gathered = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(gathered, local, group=self.group)  # the one collective of the step
        bufs = [g.cpu().numpy() for g in gathered]
        lengths = [len(series[k][0]) for k in keys]
        out = self._combine(raw, table, calls, act, units, keys, lengths, bufs, len(floats))
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out

    def _combine(self, raw: RawStep, table: np.ndarray, calls: np.ndarray, act: np.ndarray,
                 units: list[tuple[int, int]], keys: list, lengths: list[int], bufs: list[np.ndarray],
                 n_floats: int) -> tuple[RawStep, dict]:
        """Union of the ranks' activation rows and calls, this rank's parameter rows, OR-ed masks."""
        n, w, n_act, n_calls = len(raw.values), self.world, int(act.sum()), len(calls)
        parts = [b[: n_floats * 8].view(np.float64) for b in bufs]
        if any(len(b) != len(bufs[0]) or p[0] != parts[0][0] for b, p in zip(bufs, parts)):
            raise GradDoctorError("the ranks recorded different layers in this step (different modules ran, "
                                  "or sequences of different lengths); graddoctor's DDP reduction needs every "
                                  "rank to run the same layers: pad sequences to one length per step")
        acts = table[act]
        sig = acts[np.isin(acts[:, 0], SIGNAL_SLOTS), 3]
        sig = sig[sig != ZERO]
        values, rows, new_calls = [], [table[~act & (table[:, 0] != DEAD)]], []
        for r, p in enumerate(parts):  # rank r's values sit at offset r * n
            v = p[_HEAD: _HEAD + n].copy()
            v[sig] /= w
            values.append(v)
            block = acts.copy()
            block[:, 2] = p[_HEAD + n: _HEAD + n + n_act]
            block[:, 3] = np.where(block[:, 3] == ZERO, ZERO, block[:, 3] + r * n)
            rows.append(block)
            c = calls.copy()
            c[:, 1] = p[_HEAD + n + n_act: _HEAD + n + n_act + n_calls]
            c[:, 2:] += r * n
            new_calls.append(c)
        bits = sum(u for _, u in units)
        fired = np.zeros(bits, bool)
        for b in bufs:
            fired |= np.unpackbits(b[n_floats * 8:], count=bits).astype(bool)
        bounds = np.cumsum([0] + [u for _, u in units])
        dead = [u - int(fired[bounds[k]: bounds[k + 1]].sum()) for k, (_, u) in enumerate(units)]
        rows.append(np.array([[DEAD, layer, u, w * n + k] for k, (layer, u) in enumerate(units)],
                             np.int64).reshape(-1, 4))  # one row per call: units silent on every rank
        s0, m = _HEAD + n + n_act + n_calls, sum(lengths)
        sums = sum(p[s0: s0 + m] for p in parts) / (w * w)
        counts = sum(p[s0 + m: s0 + 2 * m] for p in parts)
        cut = np.cumsum([0] + lengths)
        series = {k: (sums[cut[i]: cut[i + 1]], counts[cut[i]: cut[i + 1]]) for i, k in enumerate(keys)}
        losses = [p[6] for p in parts]
        loss = None if raw.loss is None else float(np.mean(losses))
        out = RawStep(np.concatenate(values + [np.array(dead, float)]), [], rows,
                      np.concatenate(new_calls).reshape(-1), loss)
        return out, series
