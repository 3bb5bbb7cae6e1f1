"""add_residual: skip connections around repeated same-shaped blocks that have none.

The blocks are the diagnosis' own (branches.structure_of: the repeated blocks of the depth
axis, each with the probe's verdict on whether a path from its input to its output skips its
weight layers): a block that already has a skip is never wrapped. A network without such
blocks (a plain chain, e.g. an MLP) is its own depth axis: its units are a weight layer with
the activations after it; a unit module is checked by calling it with its weight matrices
zeroed (torch.func.functional_call, nothing copied): without a skip it computes a constant.
Wrapped blocks compute x + a * block(x), a = 1/sqrt(blocks in the run), through hooks on the
existing modules (hooks.add_skip): no module is renamed.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..diagnose.findings import Diagnosis
from .base import Change, Patient, Sample, run_forward, with_hooks
from .branches import structure_of
from .surgery import current
from .tracing import Flow, is_weight_layer

BLOCK = 2  # layers per residual block for a NetSpec (He et al. 2016's basic block)
MIN_RUN = 2  # at least this many same-shaped blocks in a row get skips


def branch_scale(n_blocks: int) -> float:
    """1/sqrt(blocks): keeps the forward variance bounded, (1 + 1/n)^n <= e, at any depth.

    With scale 1 each identity block adds its branch's variance, which grows 2^n with He
    init (a 20-layer ReLU net with unscaled skips diverges at lr 0.01 on digits).
    """
    return 1.0 / math.sqrt(max(n_blocks, 1))


def _weight_layers(mod: nn.Module) -> int:
    return sum(is_weight_layer(m) for m in mod.modules())


def _chains(path: str, seq: nn.Module) -> list[tuple[str, str]]:
    """(first, last) paths of the layers of a plain chain: a weight layer and what follows it."""
    kids = list(seq.named_children())
    full = lambda n: f"{path}.{n}" if path else n
    if isinstance(seq, nn.ModuleList) or any(any(True for _ in c.children()) for _, c in kids):
        units = [(n, c) for n, c in kids if _weight_layers(c) == 1]  # a list of layers, or Layer modules
        return [(full(n), full(n)) for n, _ in units] if len(units) >= MIN_RUN and \
            len({type(c) for _, c in units}) == 1 else []
    out: list[list[str]] = []
    for n, c in kids:  # single layers: a weight layer starts a block, what follows joins it
        if is_weight_layer(c) or not out:
            out.append([n])
        else:
            out[-1].append(n)
    return [(full(b[0]), full(b[-1])) for b in out if is_weight_layer(seq.get_submodule(b[0]))]


def chain_units(model: nn.Module) -> list[list[tuple[str, str]]]:
    """Groups (by parent) of consecutive (first, last) units of a plain chain of layers."""
    return [c for p, m in model.named_modules() if isinstance(m, (nn.Sequential, nn.ModuleList))
            for c in [_chains(p, m)] if len(c) >= MIN_RUN]


def _plain(v: object) -> object:
    """A call argument kept for a second call: tensors detached; state objects (a KV cache) dropped."""
    if isinstance(v, Tensor):
        return v.detach().clone()
    if isinstance(v, (tuple, list)) and all(isinstance(t, Tensor) for t in v):
        return type(v)(t.detach().clone() for t in v)
    return v if v is None or isinstance(v, (bool, int, float, str)) else None


def _capture(net: nn.Module, paths: list[str], sample: Sample) -> dict[str, tuple[tuple, dict]]:
    """The (args, kwargs) each module got on its first call in one forward (copies, caches left out)."""
    got: dict[str, tuple[tuple, dict]] = {}

    def hook(path: str):
        def pre(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            if path not in got:
                kw = {k: (False if k == "use_cache" else _plain(v)) for k, v in kwargs.items()}
                got[path] = (tuple(_plain(a) for a in args), kw)
        return pre

    register = lambda m: [m.get_submodule(p).register_forward_pre_hook(hook(p), with_kwargs=True) for p in paths]
    with_hooks(net, register, lambda: run_forward(net, sample))
    return got


def _first(out: object) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    return out[0] if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor) else None


@torch.no_grad()
def has_skip(block: nn.Module, args: tuple, kwargs: dict) -> bool:
    """True when the block's output still depends on its input with every weight matrix zeroed."""
    zero = {f"{n}.weight": torch.zeros_like(m.weight) for n, m in block.named_modules() if is_weight_layer(m)}
    x = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        return True  # cannot tell: never wrap what might have one
    outs = []
    was = block.training
    block.eval()
    try:
        # a second input that no normalisation maps onto the first (LN(a x + c) = LN(x))
        g = torch.Generator(device=x.device).manual_seed(0)
        noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * (x.float().std() + 1)
        for xi in (x, x + noise):
            a, k = copy.deepcopy(args[1:]), copy.deepcopy(kwargs)  # a call may change its arguments
            call_args = (xi, *a) if args else ()
            if not args:
                k["hidden_states"] = xi
            outs.append(_first(functional_call(block, zero, call_args, k, strict=False)))
    except Exception:  # the user's module: if it cannot be called alone, assume it has a skip
        return True
    finally:
        block.train(was)
    a, b = outs
    if a is None or b is None:
        return True
    return not torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6 * float(x.abs().max()) + 1e-12)


def _split(units: list[tuple[str, str, bool]], flow: Flow) -> list[list[tuple[str, str]]]:
    """Runs of >= MIN_RUN consecutive skip-less units whose output has the shape of their input."""
    runs, cur = [], []
    for first, last, skip in units + [(None, None, True)]:
        if first is not None and not skip and flow.in_shape.get(first) is not None \
                and flow.in_shape.get(first) == flow.out_shape.get(last):
            cur.append((first, last))
            continue
        if len(cur) >= MIN_RUN:
            runs.append(cur)
        cur = []
    return runs


def _runs(patient: Patient, sample: Sample) -> tuple[list[list[tuple[str, str]]], int]:
    """Runs of skip-less same-shaped blocks (or chain units); and how many had a skip already."""
    net, flow = current(patient, sample)
    structure = structure_of(patient, sample)
    if structure.blocks:  # the depth axis' blocks, by their stage (a ResNet stage, a transformer's list)
        stages: dict[str, list[tuple[str, str, bool]]] = {}
        for b in structure.blocks:
            stages.setdefault(b.stage, []).append((b.name, b.name, b.residual))
        groups = list(stages.values())
    else:  # a plain chain: unit modules checked with their weights zeroed
        chains = chain_units(net)
        single = [f for g in chains for f, last in g if f == last]
        inputs = _capture(net, single, sample) if single else {}
        groups = [[(f, last, f == last and f in inputs and has_skip(net.get_submodule(f), *inputs[f]))
                   for f, last in g] for g in chains]
    runs = [r for g in groups for r in _split(g, flow)]
    return runs, sum(skip for g in groups for _, _, skip in g)


class AddResidual:
    """Skips around repeated same-shaped blocks without one: y = x + a * block(x), a = 1/sqrt(n)."""

    name = "add_residual"
    label = "add_residual"

    def why_not(self, patient: Patient, diagnosis: Diagnosis | None = None, sample: Sample | None = None) -> str:
        """'' when some run of blocks has no skip; else why not."""
        if patient.spec is not None:
            if patient.spec.residual:
                return "the network has skip connections already"
            return "" if patient.spec.depth >= MIN_RUN * BLOCK else "too shallow for residual blocks"
        if sample is None:
            return "needs a sample batch to check block shapes"
        runs, with_skip = _runs(patient, sample)
        if runs:
            return ""
        if with_skip:
            return f"the repeated blocks have skip connections already ({with_skip} checked)"
        return "no run of >= 2 repeated blocks whose output has the shape of their input"

    def apply(self, patient: Patient, sample: Sample | None = None) -> Patient:
        """Skips added by hooks; every module keeps its name and its state-dict keys."""
        if patient.spec is not None:
            s = patient.spec
            scale = branch_scale(math.ceil(s.depth / BLOCK))
            changes = [Change("spec.residual", str(s.residual), str(BLOCK)),
                       Change("spec.residual_scale", f"{s.residual_scale:g}", f"{scale:.3g}")]
            return patient.with_(self.label, changes, spec=s.with_(residual=BLOCK, residual_scale=scale))
        why = self.why_not(patient, None, sample)
        if why:
            return patient.with_(self.label, [Change("<model>", "no skips", "unchanged", note=why)])
        net = current(patient, sample)[0]
        changes = []
        for run in _runs(patient, sample)[0]:
            scale = branch_scale(len(run))
            for first, last in run:
                where = first if first == last else f"{first}..{last.rpartition('.')[2]}"
                kind = type(net.get_submodule(first)).__name__
                changes.append(Change(where, kind, f"x + {scale:.3g} * block(x)", op="skip",
                                      args={"first": first, "last": last, "scale": scale}))
        return patient.with_(self.label, changes)
