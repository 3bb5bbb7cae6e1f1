"""add_residual: skip connections around runs of same-shaped blocks (NetSpec or nn.Sequential)."""
from __future__ import annotations

import math
from collections import OrderedDict

from torch import Tensor, nn

from ..data import Dataset
from ..diagnose.findings import Diagnosis
from ..nets import ResidualBlock
from .base import Change, Patient, run_forward, sample_input
from .surgery import WEIGHT_LAYERS

BLOCK = 2  # layers per residual block for a NetSpec (He et al. 2016's basic block)
MIN_RUN = 2  # a Sequential needs at least this many same-shaped blocks in a row to be wrapped


def branch_scale(n_blocks: int) -> float:
    """1/sqrt(blocks): keeps the forward variance bounded, (1 + 1/n)^n <= e, at any depth.

    With scale 1 each identity block adds its branch's variance, which grows 2^n with He
    init (a 20-layer ReLU net with unscaled skips diverges at lr 0.01 on digits).
    """
    return 1.0 / math.sqrt(max(n_blocks, 1))


def _has_weights(mod: nn.Module) -> bool:
    return any(isinstance(m, WEIGHT_LAYERS) for m in mod.modules())


def blocks(seq: nn.Sequential) -> list[list[str]]:
    """Children grouped into blocks: each starts at a child holding a weight layer."""
    out: list[list[str]] = []
    for name, child in seq.named_children():
        if _has_weights(child) or not out:
            out.append([name])
        else:
            out[-1].append(name)
    return [b for b in out if _has_weights(seq.get_submodule(b[0]))]


def _shapes(model: nn.Module, seqs: list[nn.Sequential], x: Tensor) -> dict[int, tuple]:
    """id(child) -> (input shape, output shape) of every child of the given Sequentials."""
    seen: dict[int, tuple] = {}

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:  # must return None
        first = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
        seen.setdefault(id(module), (None if first is None else tuple(first.shape),
                                     tuple(output.shape) if isinstance(output, Tensor) else None))

    hooks = [c.register_forward_hook(hook) for s in seqs for c in s.children()]
    try:
        run_forward(model, x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _runs(seq: nn.Sequential, shapes: dict[int, tuple]) -> list[list[list[str]]]:
    """Runs (>= MIN_RUN) of consecutive blocks whose output shape equals their input shape."""
    runs, cur = [], []
    for b in blocks(seq):
        first, last = shapes.get(id(seq.get_submodule(b[0]))), shapes.get(id(seq.get_submodule(b[-1])))
        if first and last and first[0] is not None and first[0] == last[1]:
            cur.append(b)
            continue
        runs, cur = runs + [cur], []
    runs.append(cur)
    return [r for r in runs if len(r) >= MIN_RUN]


def _candidates(model: nn.Module) -> list[tuple[str, nn.Sequential]]:
    return [(p, m) for p, m in model.named_modules()
            if isinstance(m, nn.Sequential) and len(blocks(m)) >= MIN_RUN]


class AddResidual:
    """Wrap blocks in y = x + alpha * block(x), alpha = 1/sqrt(blocks in the run)."""

    name = "add_residual"
    label = "add_residual"

    def applies_to(self, patient: Patient, diagnosis: Diagnosis | None = None,
                   data: Dataset | None = None) -> bool:
        """True for a NetSpec without skips, or a model with a Sequential of >= 2 weight blocks."""
        if patient.spec is not None:
            return patient.spec.residual == 0 and patient.spec.depth >= MIN_RUN * BLOCK
        return bool(_candidates(patient.model))

    def apply(self, patient: Patient, data: Dataset | None = None) -> Patient:
        """A copy with skip connections; each wrapped block keeps its first child's name."""
        if patient.spec is not None:
            s = patient.spec
            scale = branch_scale(math.ceil(s.depth / BLOCK))
            changes = [Change("spec.residual", str(s.residual), str(BLOCK)),
                       Change("spec.residual_scale", f"{s.residual_scale:g}", f"{scale:.3g}")]
            return patient.with_(self.label, changes, spec=s.with_(residual=BLOCK, residual_scale=scale))
        model = patient.surgery_copy()
        x = sample_input(data)
        if x is None:
            note = "needs sample inputs (data) to check block shapes"
            change = Change("<model>", "no skips", "unchanged", note=note)
            return patient.with_(self.label, [change], model=model)
        cands = _candidates(model)
        shapes = _shapes(model, [s for _, s in cands], x)
        changes, done = [], []
        for cpath, seq in cands:  # outermost first; never wrap inside an already wrapped container
            if any(cpath.startswith(d + ".") or d == "" for d in done):
                continue
            runs = _runs(seq, shapes)
            if not runs:
                continue
            done.append(cpath)
            wrap = {b[0]: (b, branch_scale(len(r))) for r in runs for b in r}
            inside = {n for b, _ in wrap.values() for n in b}
            items = OrderedDict(seq.named_children())
            for name in items:
                delattr(seq, name)
            for name, child in items.items():
                if name in wrap:
                    b, scale = wrap[name]
                    branch = child if len(b) == 1 and isinstance(child, nn.Sequential) else \
                        nn.Sequential(OrderedDict((n, items[n]) for n in b))
                    seq.add_module(name, ResidualBlock(branch, nn.Identity(), scale))
                    path = f"{cpath}.{name}" if cpath else name
                    changes.append(Change(path, " + ".join(type(items[n]).__name__ for n in b),
                                          f"x + {scale:.3g} * block(x)"))
                elif name not in inside:
                    seq.add_module(name, child)
        if not changes:
            changes.append(Change("<model>", "no skips", "unchanged",
                                  note="no run of >= 2 same-shaped blocks inside an nn.Sequential"))
        return patient.with_(self.label, changes, model=model)
