"""apply_changes: a treatment's changes replayed on a fresh instance of the user's class; save/load.

Every candidate treat() trains is built this way (a copy of the untreated model, then its
changes replayed), so what the user re-applies is exactly what was measured. Changes to the
training loop (learning rate, warmup, clipping, loss scaling) are not the model's: they are
listed for the user's own loop and skipped here. Saving writes the changes as JSON and the
state dict with torch.save; loading reads JSON and `torch.load(..., weights_only=True)`: no
code from the files is ever executed, and module classes come from a fixed table (MODULES).
"""
from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from ..errors import GradDoctorError, unknown
from . import hooks
from .base import Change

# The only classes a change may construct (by name, with keyword arguments).
MODULES: dict[str, type[nn.Module]] = {c.__name__: c for c in (
    nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.SELU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)}
CHANGES_FILE, STATE_FILE = "changes.json", "state_dict.pt"


def make_module(cls: str, kwargs: dict, like: nn.Module | None = None) -> nn.Module:
    """An instance of a MODULES class, on the device and in the dtype of `like`'s parameters."""
    if cls not in MODULES:
        raise unknown("module class in a change", cls, MODULES)
    mod = MODULES[cls](**kwargs)
    ref = next(like.parameters(), None) if like is not None else None
    return mod.to(dtype=ref.dtype, device=ref.device) if ref is not None else mod


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at a dotted path (e.g. 'body.3.act')."""
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def _set_module(root: nn.Module, path: str, a: dict) -> None:
    set_module(root, path, make_module(a["cls"], a.get("kwargs", {}), root))


def _norm_after(root: nn.Module, path: str, a: dict) -> None:
    mod = root.get_submodule(path)
    hooks.add_norm(mod, make_module(a["cls"], a.get("kwargs", {}), mod))


def _skip(root: nn.Module, path: str, a: dict) -> None:
    hooks.add_skip(root.get_submodule(a.get("first", path)), root.get_submodule(a["last"]), float(a["scale"]))


def _layer_scale(root: nn.Module, path: str, a: dict) -> None:
    hooks.add_layer_scale(root.get_submodule(path), int(a["channels"]), int(a["dim"]), float(a["init"]))


def _standardize(root: nn.Module, path: str, a: dict) -> None:
    ref = next(root.parameters())
    t = lambda v: torch.tensor(v, dtype=ref.dtype, device=ref.device)
    hooks.standardize_inputs(root, t(a["mean"]), t(a["std"]))


def _function(root: nn.Module, path: str, a: dict) -> None:
    hooks.swap_function(root, root.get_submodule(path), a["function"], a["target"])


def _reinit(root: nn.Module, path: str, a: dict) -> None:
    from .reinit import reinitialise

    reinitialise(root.get_submodule(path), a["init"], a.get("activation"))


@torch.no_grad()
def _scale_weight(root: nn.Module, path: str, a: dict) -> None:
    root.get_submodule(path).weight.mul_(float(a["factor"]))


@torch.no_grad()
def _fill(root: nn.Module, path: str, a: dict) -> None:
    getattr(root.get_submodule(path), a.get("param", "weight")).fill_(float(a["value"]))


@torch.no_grad()
def _library_init(root: nn.Module, path: str, a: dict) -> None:
    from .reinit import library_init

    library_init(root.get_submodule(path) if path else root)


def _dtype(root: nn.Module, path: str, a: dict) -> None:
    root.to(getattr(torch, a["dtype"]))


# op -> how to do it again on a fresh instance (path: the module the change is about)
REPLAY: dict[str, Callable[[nn.Module, str, dict], None]] = {
    "set_module": _set_module, "norm_after": _norm_after, "skip": _skip, "layer_scale": _layer_scale,
    "standardize": _standardize, "function": _function, "reinit": _reinit, "scale_weight": _scale_weight,
    "fill": _fill, "library_init": _library_init, "dtype": _dtype,
}


def apply_changes(model: nn.Module, changes: Iterable[Change | dict]) -> nn.Module:
    """Make the same changes to `model` (a fresh instance of the treated class); returns it.

    Changes to the training loop (scope 'training') are for your loop and are skipped; see
    `training_changes`. Re-initialisations draw new random weights: seed torch first for the
    same draw, or load the treated state dict afterwards (load_treated does both steps).
    """
    for c in changes:
        c = Change.from_dict(c) if isinstance(c, dict) else c
        if not c.op or c.note:
            continue
        if c.op not in REPLAY:
            raise unknown("change operation", c.op, REPLAY)
        try:
            REPLAY[c.op](model, "" if c.module_path in ("<model>", "input") else c.module_path, c.args)
        except (AttributeError, KeyError, TypeError, RuntimeError) as exc:
            raise GradDoctorError(f"cannot apply the change '{c}' to {type(model).__name__}: {exc}; "
                                  f"apply the changes to a fresh instance of the class that was treated") \
                from None
    return model


def training_changes(changes: Iterable[Change]) -> list[Change]:
    """The changes that belong to the training loop (learning rate, warmup, clipping, loss scale)."""
    return [c for c in changes if c.scope == "training" and not c.note]


def save_treated(directory: str | Path, model: nn.Module, changes: Iterable[Change],
                 extra: dict | None = None) -> Path:
    """Write DIRECTORY/changes.json (the changes) and DIRECTORY/state_dict.pt (the weights)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    changes = list(changes)
    doc = {"format": "graddoctor-treatment/1", "model_class": type(model).__name__,
           "changes": [c.to_dict() for c in changes],
           "training": [str(c) for c in training_changes(changes)], **(extra or {})}
    (d / CHANGES_FILE).write_text(json.dumps(doc, indent=2))
    torch.save(model.state_dict(), d / STATE_FILE)
    return d


def load_changes(directory: str | Path) -> list[Change]:
    """The changes a save_treated wrote."""
    path = Path(directory) / CHANGES_FILE
    if not path.is_file():
        raise GradDoctorError(f"no {CHANGES_FILE} in {directory}: pass the directory `treat --save` wrote")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GradDoctorError(f"{path} is not valid JSON: {exc}") from None
    return [Change.from_dict(c) for c in doc.get("changes", [])]


def load_treated(model: nn.Module, directory: str | Path) -> nn.Module:
    """A fresh instance of the user's class made into the saved winner: changes, then weights."""
    apply_changes(model, load_changes(directory))
    path = Path(directory) / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: nothing is executed
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise GradDoctorError(f"cannot load {path} as weights only (nothing in it is executed): "
                              f"{str(exc).splitlines()[0]}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise GradDoctorError(f"the saved weights do not fit {type(model).__name__}: "
                              f"{str(exc).splitlines()[0]}; load them into the class that was treated") from None
    return model
