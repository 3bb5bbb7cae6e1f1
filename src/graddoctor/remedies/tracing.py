"""What one forward pass of the user's step shows a remedy: which activation each layer feeds.

The activations are found the way the probe finds them: by the autograd node (grad_fn) that
produced each weight layer's input (probe.stats.activation_of), so an activation applied as a
module (nn.Sigmoid) and one applied functionally (torch.sigmoid, F.relu, x.tanh()) are seen
alike, and only where it is an activation: a sigmoid used as a gate (x * sigmoid(s), as in
squeeze-excitation) does not feed a layer directly and is not one. Walking back from that
node to the outputs of earlier weight layers gives "the activation each layer feeds", in the
order data flows, whatever the order modules were defined in.
"""
from __future__ import annotations

import weakref
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .. import activations
from ..probe.stats import activation_of
from .base import Sample

# torch functions that apply an activation, as a TorchFunctionMode sees them (F.sigmoid and
# F.tanh reach it as the Tensor methods; nn.ReLU as F.relu).
FUNCTIONS: dict[object, str] = {
    torch.sigmoid: "sigmoid", torch.Tensor.sigmoid: "sigmoid", torch.special.expit: "sigmoid",
    torch.tanh: "tanh", torch.Tensor.tanh: "tanh",
    torch.relu: "relu", torch.nn.functional.relu: "relu", torch.Tensor.relu: "relu",
    torch.nn.functional.leaky_relu: "leaky_relu", torch.nn.functional.selu: "selu",
    torch.nn.functional.elu: "elu", torch.nn.functional.gelu: "gelu", torch.nn.functional.silu: "silu",
}
MAX_WALK = 24  # autograd nodes visited walking back from an activation to the layers feeding it


def is_weight_layer(mod: nn.Module) -> bool:
    """A module with a matrix/kernel `weight` applied to its input (Linear, Conv, HF Conv1D; not Embedding)."""
    w = getattr(mod, "weight", None)
    return (isinstance(w, nn.Parameter) and w.dim() >= 2 and "weight" in mod._parameters
            and not isinstance(mod, nn.Embedding))


@dataclass
class Site:
    """One activation: where it is applied and which weight layers it sits between."""

    activation: str  # registry name: sigmoid, tanh, relu, ...
    module: str | None  # the activation module's path; None when applied functionally
    producer: str | None = None  # functional: the module whose output it was applied to (None: not one)
    feeds: list[str] = field(default_factory=list)  # weight layers whose input it is
    fed_by: list[str] = field(default_factory=list)  # weight layers whose output reaches it
    unnormed: list[str] = field(default_factory=list)  # those of them with no norm in between


@dataclass
class Flow:
    """What one forward showed: the activation sites, and per module its output shape."""

    sites: list[Site]
    feeds: dict[str, str | None]  # weight layer -> the activation its output goes through (None: none)
    out_shape: dict[str, tuple]  # module path -> shape of its (first) output tensor, first call
    in_shape: dict[str, tuple]  # module path -> shape of its first input tensor, first call
    order: list[str]  # weight layers in the order they ran
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)  # weight layer -> its output's dtype


class _Calls(TorchFunctionMode):
    """Records activation functions called during a forward: output node -> the module whose
    output was its input (None: not a module's output), resolved while that input is alive."""

    def __init__(self, outputs: dict[int, tuple[weakref.ref, str]]) -> None:
        super().__init__()
        self.outputs = outputs  # id(module output) -> (weak reference, module path), filled by hooks
        self.calls: dict[object, str | None] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in FUNCTIONS and args and isinstance(out, Tensor) and out.grad_fn is not None:
            hit = self.outputs.get(id(args[0]))
            self.calls[out.grad_fn] = hit[1] if hit is not None and hit[0]() is args[0] else None
        return out


def _first(obj: object) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        return next((t for t in map(_first, obj) if t is not None), None)
    if isinstance(obj, dict):
        return _first(list(obj.values()))  # also a Hugging Face ModelOutput (a dict)
    return None


def is_norm(mod: nn.Module) -> bool:
    """BatchNorm, LayerNorm, GroupNorm, RMSNorm and the libraries' own (by class name)."""
    return "Norm" in type(mod).__name__ and any(True for _ in mod.parameters(recurse=False))


def _walk_back(node: object, layer_out: dict[object, str], norm_out: set,
               stop: set) -> tuple[list[str], list[str]]:
    """Weight layers whose output reaches `node` (not through another activation), and those
    among them that reach it without passing a normalisation layer."""
    found: dict[str, bool] = {}  # layer -> reached without a norm on the way
    seen = {node}
    queue = deque((n, False) for n, _ in getattr(node, "next_functions", ()) if n is not None)
    while queue and len(seen) < MAX_WALK:
        n, normed = queue.popleft()
        if n in seen:
            continue
        seen.add(n)
        if n in layer_out:
            found[layer_out[n]] = found.get(layer_out[n], False) or not normed
            continue
        if n in stop:
            continue
        normed = normed or n in norm_out
        queue.extend((m, normed) for m, _ in getattr(n, "next_functions", ()) if m is not None)
    return list(found), [p for p, raw in found.items() if raw]


def trace_flow(model: nn.Module, sample: Sample) -> Flow:
    """Run the sample once (eval mode, autograd on) and read the activations off the autograd graph."""
    names = {m: n for n, m in model.named_modules()}
    layer_out: dict[object, str] = {}  # grad_fn of a weight layer's output -> its path
    act_out: dict[object, str] = {}  # grad_fn of an activation module's output -> its path
    norm_out: set = set()  # grad_fn of a normalisation layer's output
    out_ids: dict[int, tuple[weakref.ref, str]] = {}  # id(output tensor) -> (ref, module path)
    inputs: list[tuple[str, object]] = []  # (weight layer, Source of its input) in call order
    out_shape: dict[str, tuple] = {}
    in_shape: dict[str, tuple] = {}
    dtypes: dict[str, torch.dtype] = {}

    def pre(mod: nn.Module, args: tuple) -> None:
        path, x = names[mod], _first(args)
        if x is not None:
            in_shape.setdefault(path, tuple(x.shape))
        if is_weight_layer(mod):
            inputs.append((path, activation_of(x)))  # through padding too

    def post(mod: nn.Module, args: tuple, out: object) -> None:
        path, y = names[mod], _first(out)
        if y is None:
            return
        out_shape.setdefault(path, tuple(y.shape))
        out_ids[id(y)] = (weakref.ref(y), path)
        if is_weight_layer(mod):
            dtypes.setdefault(path, y.dtype)
        if y.grad_fn is not None:
            if is_weight_layer(mod):
                layer_out.setdefault(y.grad_fn, path)
            elif activations.of_module(mod) is not None:
                act_out.setdefault(y.grad_fn, path)
            elif is_norm(mod):
                norm_out.add(y.grad_fn)

    handles = [h for m in names for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    calls = _Calls(out_ids)
    try:
        with calls:
            loss = sample.run(model)
    finally:
        for h in handles:
            h.remove()
    del loss  # the graph stays alive through the nodes held below until this function returns
    stop = set(act_out) | set(calls.calls)
    sites: dict[object, Site] = {}
    for path, src in inputs:
        if src is None:
            continue
        site = sites.get(src.node)
        if site is None:
            if src.node in act_out:
                site = Site(src.name, act_out[src.node])
            else:
                site = Site(src.name, None, calls.calls.get(src.node))
            site.fed_by, site.unnormed = _walk_back(src.node, layer_out, norm_out, stop)
            sites[src.node] = site
        if path not in site.feeds:
            site.feeds.append(path)
    order = list(dict.fromkeys(p for p, _ in inputs))
    feeds: dict[str, str | None] = {p: None for p in order}
    for site in sites.values():
        for p in site.fed_by:
            feeds[p] = feeds.get(p) or site.activation
    return Flow(list(sites.values()), feeds, out_shape, in_shape, order, dtypes)
