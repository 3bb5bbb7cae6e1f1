"""The network's structure, learned from the model and its first recorded forward pass.

`find_blocks(model)` (no forward needed) names the modules that make the depth axis: the
repeated blocks of a ModuleList/Sequential (GPT-2's `h.0 .. h.11`, a ResNet's bottleneck
units, ConvNeXt's layers). `GraphRecorder` (graph.py) runs during the first recorded step only
(StructurePart, one of the Probe's parts): it tags
the output of every recorded module call and, at each call, walks the autograd graph back
from the call's input to the nearest tagged outputs, so it learns which layers feed which
(and through what: a concatenation, the attention softmax), which blocks add their input to
their output (a residual stream) and which layers lie on a block's shortcut. No torch.fx:
the graph autograd builds anyway is read, nothing is traced. The result is a plain dict
(JSON-able), kept as `trace.structure`; diagnose/structure.py turns it into verdict inputs.
"""
from __future__ import annotations

from collections import Counter

from torch import Tensor, nn

from .graph import GraphRecorder, is_weight_layer  # noqa: F401  (re-exported)

# A block must hold at least this many weight layers (modules owning a >= 2-D parameter:
# Linear, Conv, Embedding, attention projections; norms and scales own 1-D ones). One weight
# layer with its norm (a ResNet "conv layer", a NetSpec Linear + BatchNorm) is a layer, not a
# block; a residual unit has two or more.
MIN_BLOCK_WEIGHT_LAYERS = 2
# A repeated container needs at least this many children of one class.
MIN_REPEATS = 2
CONTAINERS = (nn.ModuleList, nn.ModuleDict)


def _weight_layers(module: nn.Module) -> int:
    """Modules in `module`'s subtree (itself included) that own a parameter with >= 2 dimensions."""
    return sum(any(p.dim() >= 2 for p in m._parameters.values() if p is not None) for m in module.modules())


def _repeated_children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The children of `module` that repeat one class (MIN_REPEATS or more) and are blocks by size.

    Only numbered children count (the entries of a ModuleList or Sequential: "0", "1", ...): a
    decoder layer's `self_attn` and `encoder_attn` share a class but are parts, not a sequence.
    A bare ModuleList/ModuleDict (a stage's list of blocks) is a container, never a block.
    """
    children = [(n, c) for n, c in module.named_children() if n.isdigit() and not isinstance(c, CONTAINERS)
                and _weight_layers(c) >= MIN_BLOCK_WEIGHT_LAYERS]
    counts = Counter(type(c) for _, c in children)
    return [(n, c) for n, c in children if counts[type(c)] >= MIN_REPEATS]


def find_blocks(model: nn.Module) -> list[str]:
    """Qualified names of the model's repeated blocks (the depth axis), in registration order.

    A block is a child of a container that holds MIN_REPEATS or more children of one class,
    each with MIN_BLOCK_WEIGHT_LAYERS or more weight layers; where such blocks nest (a ResNet
    stage of bottleneck units, a T5 stack of T5Blocks), the innermost ones are the depth axis.
    [] for a plain chain of layers (an MLP, an LSTM), which is its own depth axis.
    """
    names = {m: n for n, m in reversed(list(model.named_modules()))}  # a module's first name
    blocks: list[nn.Module] = []

    def visit(module: nn.Module) -> bool:
        """Collect blocks below `module`; True when any was found."""
        found = False
        repeated = {id(c) for _, c in _repeated_children(module)}
        for _, child in module.named_children():
            inner = visit(child)
            if id(child) in repeated and not inner:
                blocks.append(child)
            found = found or inner or id(child) in repeated
        return found

    visit(model)
    # a stage with a single unit (RegNet depths [1, 2, 2, 1]) was taken whole: use its unit,
    # the class of blocks found elsewhere, instead
    classes = {type(b) for b in blocks}
    refined: list[nn.Module] = []
    for b in blocks:
        inner = [m for m in b.modules() if m is not b and type(m) in classes]
        refined += [m for m in inner if not any(m in o.modules() for o in inner if o is not m)] or [b]
    seen: set[int] = set()
    out = []
    for b in refined:  # a module registered twice is one block
        if id(b) not in seen:
            seen.add(id(b))
            out.append(names[b])
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(out, key=lambda n: order.get(n, 0))


class StructurePart:
    """The Probe's part (parts.py) that records the structure on the first recorded training step.

    Its hooks exist only during recorded full steps until a structure was learnt (normally step 0
    alone); the result goes to trace.meta["structure"]. Duck-types parts.Part (no import cycle).
    """

    wants_forward = False

    def __init__(self, model: nn.Module, layout, meta: dict, blocks: list[str]) -> None:
        self.model, self.layout, self.meta, self.blocks = model, layout, meta, blocks
        self.recorder: GraphRecorder | None = None
        self.done = False

    def begin(self, rec, full: bool) -> None:
        """Attach on a recorded full step (until the structure is known); detach otherwise."""
        if full and not self.done and self.recorder is None:
            self.recorder = GraphRecorder(self.model, self.layout.names, self.layout.candidates(), self.blocks)
        elif not full and self.recorder is not None:
            self.recorder.remove()
            self.recorder = None

    def forward(self, layer: int, x: Tensor | None) -> None:
        """Not used: the recorder has its own hooks (it needs outputs and block inputs)."""

    def file(self, rec) -> None:
        """No device values."""

    def finish(self, step: int, raw, token: object, own) -> object:
        """The step was recorded: keep the structure if its forward ran with gradients."""
        if self.recorder is not None:
            result = self.recorder.result()
            if result is not None:
                self.meta["structure"] = result
                self.done = True
            self.recorder.remove()  # learnt, or no training forward ran: the next recorded step starts afresh
            self.recorder = None
        return raw

    def holding(self, step: int) -> bool:
        """Never holds a step."""
        return False

    def release(self, loss: object = None) -> list:
        """Nothing held."""
        return []

    def close(self, clean: bool = True) -> list:
        """Remove the recorder's hooks."""
        if self.recorder is not None:
            self.recorder.remove()
            self.recorder = None
        return []
