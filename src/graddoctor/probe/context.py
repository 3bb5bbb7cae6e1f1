"""What the run was set up with, for the diagnosis: the optimizer's hyperparameters, the dtypes.

Pure reads of host-side Python state (no tensor is touched, no host sync), JSON-able.
"""
from __future__ import annotations

import torch
from torch import nn

OPTIMIZER_KEYS = ("lr", "eps", "betas", "momentum", "weight_decay")  # read from the first param group


def _plain(v: object) -> object:
    """A JSON-able copy of a hyperparameter (tensors -> floats, tuples -> lists)."""
    if isinstance(v, torch.Tensor):
        return float(v.detach().cpu()) if v.numel() == 1 else v.detach().cpu().tolist()
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


def describe_optimizer(optimizer: torch.optim.Optimizer) -> dict:
    """{"type", "lr", "eps", "betas", "momentum", "weight_decay"} of the first param group (missing keys omitted)."""
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    out: dict = {"type": type(optimizer).__name__}
    out.update({k: _plain(group[k]) for k in OPTIMIZER_KEYS if k in group and group[k] is not None})
    return out


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The first param group's learning rate now (nan if it has none)."""
    lr = optimizer.param_groups[0].get("lr") if optimizer.param_groups else None
    return float("nan") if lr is None else float(_plain(lr))


def param_dtypes(model: nn.Module) -> list[str]:
    """Sorted names of the parameters' dtypes, e.g. ["bfloat16", "float32"]."""
    return sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})


LOW_PRECISION = ("float16", "bfloat16")


def dtypes_meta(model: nn.Module, autocast: str | None, scaler: object | None) -> dict:
    """trace.meta["dtypes"]: {"params", "autocast" (as seen in a recorded forward), "grad_scaler"}."""
    enabled = scaler is not None and bool(getattr(scaler, "is_enabled", lambda: True)())
    return {"params": param_dtypes(model), "autocast": autocast, "grad_scaler": enabled}
