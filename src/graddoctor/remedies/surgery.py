"""Helpers for editing nn.Module trees: leaves in order, replace by path, layer -> activation.

Pure tree manipulation on a model the caller owns (the remedies pass deep copies).
"""
from __future__ import annotations

from torch import nn

from .. import activations

# Layers a remedy may re-initialise or put a BatchNorm after: the weight layers whose
# fan-in/fan-out torch.nn.init understands (torch's own reset rules cover exactly these).
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Modules that sit between a weight layer and its activation without changing which
# activation the layer feeds (skipped when looking for "the activation after this layer").
PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)


def leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every leaf module, in definition order."""
    return [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at a dotted path (e.g. 'body.3.act')."""
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def activation_after(model: nn.Module) -> dict[str, str | None]:
    """For each weight layer: the registry name of the activation module that follows it.

    "Follows" means the next leaf in definition order, skipping norms and dropout; None when
    the next leaf is another weight layer, the end, or an unknown module (e.g. an activation
    applied functionally inside forward(), which no module tree shows).
    """
    out: dict[str, str | None] = {}
    seq = leaves(model)
    for i, (name, mod) in enumerate(seq):
        if not isinstance(mod, WEIGHT_LAYERS):
            continue
        out[name] = None
        for _, nxt in seq[i + 1:]:
            if isinstance(nxt, PASS_THROUGH):
                continue
            act = activations.of_module(nxt)
            out[name] = act.name if act is not None and act.name != "identity" else None
            break
    return out


def describe(mod: nn.Module) -> str:
    """Short text for a module in a Change record: its repr on one line."""
    return " ".join(repr(mod).split())


def weight_std(layer: nn.Module) -> str:
    """'std 0.13': a layer's weight std for a Change record (2 digits, so equal edits merge)."""
    return f"std {float(layer.weight.detach().std()):.2g}"
