"""FSDP2 (`torch.distributed.fsdp.fully_shard`): global statistics from each rank's shards.

Under fully_shard every parameter (and its gradient) is a DTensor sharded over a 1-D device
mesh: each rank holds a slice of every weight, and no rank has the whole. The probe measures
each rank's *local* shard (`local`) and ShardsPart combines the ranks in the step's one
`all_gather`, as RanksPart does under DDP (distributed.py), with one difference:

- parameter slots (gradient, weight, update norms, non-finite and zero counts: "same" under
  DDP, where ranks hold replicas) are sums over disjoint slices here: sums of squares and
  counts add across the shards, |g|^2 = sum_r |g_r|^2, so they are combined like "add" slots,
  each rank filing its shard's element count. FSDP2 averages the gradients across ranks
  (reduce-scatter), so a shard is a slice of the global batch's gradient, as under DDP.
- error signals, activation statistics and dead units: each rank runs its own part of the
  batch, exactly as under DDP (divided by the world size, added, OR-ed).

The update ratio's weight change is taken on each shard (update.py samples a shard of more
than EXACT_UP_TO elements, as it would a whole tensor). The every-step non-finite checks of the
steps after the last recorded one are agreed at close, as under DDP (RanksPart.agree).

Anything whose parameters do not have this shape is refused with one line, never measured:
FSDP1 (FullyShardedDataParallel: flat parameters), DTensor parameters outside fully_shard
(tensor parallelism), 2-D meshes (HSDP, FSDP + TP), a mix of sharded and plain parameters,
and DeepSpeed engines / ZeRO-partitioned parameters.
"""
from __future__ import annotations

import sys

from torch import Tensor, nn

from ..errors import GradDoctorError
from .distributed import RanksPart

FSDP1 = ("watch() got a model wrapped in FullyShardedDataParallel (FSDP1): its flat parameters mix layers "
         "and each rank holds a slice of them, so per-layer numbers would be wrong; shard it with FSDP2 "
         "(torch.distributed.fsdp.fully_shard), which graddoctor measures globally, or watch it unsharded")
DEEPSPEED = ("watch() got a DeepSpeed {what}: ZeRO partitions gradients and weights inside its engine, where "
             "graddoctor cannot read them, so the numbers would be one rank's partition or none; watch the model "
             "under plain DDP or FSDP2 (torch.distributed.fsdp.fully_shard) to diagnose it")
UNSUPPORTED = ("watch() got parameters sharded in a way graddoctor cannot measure globally ({why}); supported: "
               "FSDP2 fully_shard over a 1-D mesh (every parameter sharded on one dimension) and DDP; watch a "
               "copy of the model under one of those")


class ShardsPart(RanksPart):
    """RanksPart for fully_shard: parameter numbers are per-shard sums that add across ranks."""

    sharded = True

    def __init__(self, group: object, meta: dict) -> None:
        super().__init__(group, meta)
        meta["sharding"] = "fsdp2"


def local(tensors: list[Tensor | None]) -> list[Tensor | None]:
    """Each DTensor's shard on this rank (plain tensors and None as they are): read fresh every step."""
    # _local_tensor: FSDP2 may swap a parameter's local tensor (lazy init, load_state_dict),
    # and DTensor.to_local() costs an autograd-function call per tensor; the attribute is free
    return [getattr(t, "_local_tensor", t) for t in tensors]


def shard_group(model: nn.Module) -> object | None:
    """The process group `model`'s parameters are sharded over by fully_shard (None: not sharded).

    Raises GradDoctorError for any other kind of sharding (FSDP1, tensor parallel, HSDP, DeepSpeed).
    """
    _refuse_others(model)
    if "torch.distributed.tensor" not in sys.modules:  # nothing can be a DTensor yet
        return None
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    sharded = [p for p in params if isinstance(p, DTensor)]
    if not sharded:
        return None
    from torch.distributed.fsdp import FSDPModule

    if not any(isinstance(m, FSDPModule) for m in model.modules()):
        raise GradDoctorError(UNSUPPORTED.format(why="DTensor parameters without fully_shard: tensor parallelism"))
    if len(sharded) < len(params):
        raise GradDoctorError(UNSUPPORTED.format(
            why=f"{len(params) - len(sharded)} of {len(params)} parameters are not sharded: fully_shard the "
                "root module too, so that every gradient is reduced across ranks"))
    mesh = sharded[0].device_mesh
    for p in sharded:
        if p.device_mesh.ndim != 1:
            raise GradDoctorError(UNSUPPORTED.format(why=f"a {p.device_mesh.ndim}-D device mesh: HSDP or FSDP "
                                                         "with tensor parallelism"))
        if p.device_mesh != mesh:
            raise GradDoctorError(UNSUPPORTED.format(why="parameters on different device meshes"))
        if len(p.placements) != 1 or not p.placements[0].is_shard():
            raise GradDoctorError(UNSUPPORTED.format(why=f"placements {tuple(p.placements)}"))
    return mesh.get_group()


def _refuse_others(model: nn.Module) -> None:
    """FSDP1 and DeepSpeed: refused with what to do instead."""
    if "torch.distributed.fsdp" in sys.modules:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            raise GradDoctorError(FSDP1)
    if type(model).__name__ == "DeepSpeedEngine":
        raise GradDoctorError(DEEPSPEED.format(what="engine"))
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        raise GradDoctorError(DEEPSPEED.format(what="ZeRO-3 partitioned model"))
