"""Which modules of a model are layers, in which order, and which parameters each one owns.

A layer is a module that owns parameters directly (Linear, Conv, BatchNorm, Embedding, LSTM,
LayerNorm, MultiheadAttention, ...); containers own none and are skipped. Layers are numbered
in the order their forward first finishes, so layer 0 is where the data enters.

A parameter is counted once, for the first layer in forward order that owns it (tied weights).
Parameters of a module that never runs as a module (MultiheadAttention.out_proj, which its
parent applies functionally) go to the nearest ancestor that ran, at the first recorded step;
a module first seen later only through its gradients becomes a layer of its own, appended.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor, nn

from .trace import LayerInfo


@dataclass
class Layer:
    """One probed layer and the parameters counted for it."""

    module: nn.Module
    name: str
    activation: str | None = None  # registry name of the activation feeding its input
    in_size: int = 0  # elements per sample of its first input / output, on its first call (0: none)
    out_size: int = 0
    weights: list[Tensor] = field(default_factory=list)  # every parameter but the biases
    biases: list[Tensor] = field(default_factory=list)  # parameters whose name contains "bias"

    def info(self) -> LayerInfo:
        """The Trace's description of this layer."""
        return LayerInfo(self.name, type(self.module).__name__, sum(p.numel() for p in self.weights),
                         self.activation, out_size=self.out_size, in_size=self.in_size)


@dataclass(frozen=True)
class ParamPlan:
    """Flat, numpy-indexed view of the parameters, rebuilt only when the layout changes."""

    params: list[Tensor]  # every parameter of the model, de-duplicated (the global norm)
    layer: np.ndarray  # (n_params,) owning layer, -1 if none
    bias: np.ndarray  # (n_params,) bool
    numel: np.ndarray  # (n_params,)
    weights: list[Tensor]  # the non-bias parameters counted for a layer
    w_layer: np.ndarray  # (n_weights,)
    w_numel: np.ndarray  # (n_weights,)
    local: Callable | None = None  # sharded parameters (fsdp.py): tensors -> this rank's shards; counts are theirs

    def grads(self) -> list[Tensor | None]:
        """The parameters' gradients now (this rank's shards when sharded), None where there is none."""
        grads = [p.grad for p in self.params]
        return grads if self.local is None else self.local(grads)

    def weight_tensors(self) -> list[Tensor]:
        """The weights to measure (this rank's shards when sharded), read now."""
        return self.weights if self.local is None else self.local(self.weights)


class Layout:
    """The model's layers in forward order, and the owner of every parameter."""

    def __init__(self, model: nn.Module, local: Callable | None = None) -> None:
        self.local = local  # sharded parameters: tensors -> this rank's shards (fsdp.local)
        self.names: dict[nn.Module, str] = {}
        self.parent: dict[nn.Module, nn.Module] = {}
        for name, mod in model.named_modules():  # a module registered twice keeps its first name
            self.names[mod] = name or type(model).__name__
            for child in mod.children():
                self.parent.setdefault(child, mod)
        self.own: dict[nn.Module, list[tuple[str, Tensor]]] = {
            m: [(n, p) for n, p in m._parameters.items() if p is not None] for m in self.names}
        self.own = {m: ps for m, ps in self.own.items() if ps}
        self.params: list[Tensor] = list(model.parameters())  # de-duplicated: the global norm
        self.layers: list[Layer] = []
        self.index: dict[nn.Module, int] = {}
        self.owner: dict[int, tuple[int, bool]] = {}  # id(parameter) -> (layer, is_bias)
        self._n_owned = len({id(p) for ps in self.own.values() for _, p in ps})
        self._plan: tuple[tuple[int, int], ParamPlan] | None = None

    def grads(self) -> list[Tensor | None]:
        """Every parameter's gradient now (this rank's shards when sharded), None where there is none."""
        return self.plan().grads()

    def candidates(self) -> list[nn.Module]:
        """Modules that own parameters: the ones that get forward hooks."""
        return list(self.own)

    def discover(self, module: nn.Module, activation: str | None = None, in_size: int = 0,
                 out_size: int = 0) -> int:
        """Make `module` the next layer; it takes every parameter it owns that has no owner yet."""
        pos = len(self.layers)
        layer = Layer(module, self.names[module], activation, in_size, out_size)
        self.layers.append(layer)
        self.index[module] = pos
        for name, p in self.own.get(module, []):
            self._give(p, pos, name)
        return pos

    def _give(self, p: Tensor, pos: int, name: str) -> None:
        if id(p) in self.owner:
            return
        self.owner[id(p)] = (pos, "bias" in name)
        (self.layers[pos].biases if "bias" in name else self.layers[pos].weights).append(p)

    def adopt_orphans(self, first: bool) -> None:
        """Give parameters whose module never ran to an ancestor layer (first step) or a new layer."""
        if len(self.owner) == self._n_owned:
            return
        for module, named in self.own.items():
            for name, p in named:
                if id(p) in self.owner:
                    continue
                anc = self.parent.get(module)
                while first and anc is not None and anc not in self.index:
                    anc = self.parent.get(anc)
                if first and anc is not None:
                    self._give(p, self.index[anc], name)
                elif p.grad is not None:
                    self.discover(module)

    def plan(self) -> ParamPlan:
        """The parameters as flat lists and index arrays (cached until a layer or owner is added)."""
        key = (len(self.layers), len(self.owner))
        if self._plan is None or self._plan[0] != key:
            owner = [self.owner.get(id(p), (-1, False)) for p in self.params]
            ws = [(i, p) for i, layer in enumerate(self.layers) for p in layer.weights]
            mine = self.local or (lambda ts: ts)  # element counts of what this rank measures
            plan = ParamPlan(self.params, np.array([o[0] for o in owner], dtype=np.int64),
                             np.array([o[1] for o in owner], dtype=bool),
                             np.array([p.numel() for p in mine(self.params)], dtype=np.int64),
                             [p for _, p in ws], np.array([i for i, _ in ws], dtype=np.int64),
                             np.array([p.numel() for p in mine([p for _, p in ws])], dtype=np.int64), self.local)
            self._plan = (key, plan)
        return self._plan[1]
