"""add_batchnorm: a BatchNorm after each Linear/Conv that feeds an activation (before it)."""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .. import activations
from ..data import Dataset
from ..diagnose.findings import Diagnosis
from .base import Change, Patient, run_forward, sample_input
from .surgery import describe

# Dispatch table keyed by module class: the norm to insert and the output rank it expects
# (BatchNorm1d after a Linear normalises (N, F); after a (N, L, F) sequence it would mix
# up the feature axis, so such layers are skipped with a note).
NORM_AFTER: dict[type[nn.Module], tuple[Callable[[nn.Module], nn.Module], int]] = {
    nn.Linear: (lambda m: nn.BatchNorm1d(m.out_features), 2),
    nn.Conv1d: (lambda m: nn.BatchNorm1d(m.out_channels), 3),
    nn.Conv2d: (lambda m: nn.BatchNorm2d(m.out_channels), 4),
    nn.Conv3d: (lambda m: nn.BatchNorm3d(m.out_channels), 5),
}
SUFFIX = "_bn"  # the inserted module is named after its layer: "3" -> "3_bn", "fc" -> "fc_bn"


def _feeds_activation(nxt: nn.Module | None) -> bool:
    act = activations.of_module(nxt) if nxt is not None else None
    return act is not None and act.name != "identity"


def insertion_points(model: nn.Module) -> list[tuple[str, nn.Sequential, str]]:
    """(container path, container, child name) for each Linear/Conv followed by an activation."""
    out = []
    for cpath, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        items = list(seq.named_children())
        for i, (name, child) in enumerate(items):
            nxt = items[i + 1][1] if i + 1 < len(items) else None
            if type(child) in NORM_AFTER and _feeds_activation(nxt):
                out.append((cpath, seq, name))
    return out


def _output_ranks(model: nn.Module, paths: list[str], x: Tensor) -> dict[str, int]:
    ranks: dict[str, int] = {}

    def record(path: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:  # must return None
            ranks.setdefault(path, output.dim())
        return hook

    hooks = [model.get_submodule(p).register_forward_hook(record(p)) for p in paths]
    try:
        run_forward(model, x)
    finally:
        for h in hooks:
            h.remove()
    return ranks


class AddBatchNorm:
    """Insert BatchNorm between each Linear/Conv and its activation (Ioffe & Szegedy 2015)."""

    name = "add_batchnorm"
    label = "add_batchnorm"

    def applies_to(self, patient: Patient, diagnosis: Diagnosis | None = None,
                   data: Dataset | None = None) -> bool:
        """True for a NetSpec without BN, or a model with a Linear/Conv -> activation in a Sequential."""
        if patient.spec is not None:
            return patient.spec.batchnorm == "none"
        return bool(insertion_points(patient.model))

    def apply(self, patient: Patient, data: Dataset | None = None) -> Patient:
        """A copy with the norms inserted; module names of existing layers are kept."""
        if patient.spec is not None:
            s = patient.spec
            return patient.with_(self.label, [Change("spec.batchnorm", s.batchnorm, "before_activation")],
                                 spec=s.with_(batchnorm="before_activation"))
        model = patient.surgery_copy()
        points = insertion_points(model)
        full = [f"{c}.{n}" if c else n for c, _, n in points]
        x = sample_input(data)
        ranks = _output_ranks(model, full, x) if x is not None else {}
        changes, by_container = [], {}
        for (_cpath, seq, name), path in zip(points, full):
            layer = seq.get_submodule(name)
            make, rank = NORM_AFTER[type(layer)]
            if ranks.get(path, rank) != rank:
                norm = type(make(layer)).__name__
                changes.append(Change(path, describe(layer), "unchanged",
                                      note=f"its output has {ranks[path]} dimensions, {norm} expects "
                                           f"{rank}; normalise it yourself (e.g. LayerNorm)"))
                continue
            by_container.setdefault(id(seq), (seq, set()))[1].add(name)
        for seq, names in by_container.values():
            items = list(seq.named_children())
            for name, _ in items:
                delattr(seq, name)
            for name, child in items:  # same container class and names, norms added in place
                seq.add_module(name, child)
                if name in names:
                    w = child.weight
                    bn = NORM_AFTER[type(child)][0](child).to(dtype=w.dtype, device=w.device)
                    seq.add_module(name + SUFFIX, bn)
                    path = next(p for (c, s, n), p in zip(points, full) if s is seq and n == name)
                    changes.append(Change(path + SUFFIX, "(none)", f"{type(bn).__name__}({bn.num_features})"))
        return patient.with_(self.label, changes, model=model)
