"""What watch() was given -> what it hooks: torch.compile, DistributedDataParallel, FSDP2 (fsdp.py).

- torch.compile: a compiled graph does not run module hooks added after it was traced (dynamo
  skips hook guards), so stats="full" on an OptimizedModule is refused with what to do
  instead; stats="norms" (optimizer hooks and parameter gradients only) works on it, with no
  module hook at all. Calling a compiled copy of a watched module is warned about (probe.py).
- DistributedDataParallel: the wrapped module is watched (its names, as in a single process),
  and the DDP's process group is the one each recorded step is reduced over.
- FSDP2 (fully_shard): the model itself is watched; its mesh's group is the one reduced over, and
  the parameters are measured shard by shard (fsdp.py). Other sharding is refused there.
"""
from __future__ import annotations

import warnings

from torch import nn

from ..errors import GradDoctorError
from .distributed import world_of
from .fsdp import shard_group

COMPILED = ("watch() got a torch.compile'd model ({name}): a compiled graph does not run module hooks, so "
            "stats='full' (error signals, activations) would record nothing. Either watch it with "
            "stats='norms' (parameter gradients, weights, update ratios: works compiled), or diagnose the "
            "original module uncompiled: graddoctor.watch(model._orig_mod) and call model._orig_mod(x) "
            "while watching")
NO_FORWARD = ("watch() saw gradients but no forward pass of any watched layer in the first recorded step: if "
              "you call a torch.compile'd copy of this model, its graph does not run the probe's hooks (watch "
              "and call the uncompiled module, or use stats='norms'); if the forward ran under no_grad, "
              "nothing can be recorded")


def _is_compiled(model: nn.Module) -> bool:
    return type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod")


def resolve(model: nn.Module, stats: str,
            process_group: object | None) -> tuple[nn.Module, object | None, bool, bool]:
    """(the module to hook, the process group to reduce over, compiled?, FSDP2-sharded?) for watch()'s model."""
    from torch.nn.parallel import DistributedDataParallel

    compiled, group = False, process_group
    while True:
        if _is_compiled(model):
            if stats == "full":
                raise GradDoctorError(COMPILED.format(name=type(model._orig_mod).__name__))
            model, compiled = model._orig_mod, True
        elif isinstance(model, DistributedDataParallel):
            group = model.process_group if group is None else group
            model = model.module
        else:
            break
    shards = shard_group(model)  # FSDP2; refuses FSDP1, tensor parallel, DeepSpeed
    if shards is not None:
        if group is not None and world_of(group)[0] != world_of(shards)[0]:
            raise GradDoctorError(f"process_group= has {world_of(group)[0]} ranks but the model is sharded over "
                                  f"{world_of(shards)[0]} by fully_shard; leave process_group= out under FSDP2")
        group = shards if group is None else group
    if group is None and world_of(_default_group())[0] > 1:
        warnings.warn("torch.distributed is running but watch() got neither a DistributedDataParallel model nor "
                      "process_group=: the statistics are this rank's alone; watch the DDP-wrapped model (or pass "
                      "process_group=torch.distributed.group.WORLD) to record the global batch", stacklevel=4)
    return model, group, compiled, shards is not None


def _default_group() -> object | None:
    import torch.distributed as dist

    return dist.group.WORLD if dist.is_available() and dist.is_initialized() else None
