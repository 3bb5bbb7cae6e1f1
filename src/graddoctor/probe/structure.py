"""The network's structure, learned from the model and its first recorded forward pass.

`find_blocks(model)` (no forward needed) names the modules that make the depth axis: the
repeated blocks of a ModuleList/Sequential (GPT-2's `h.0 .. h.11`, a ResNet's bottleneck
units, ConvNeXt's layers). `GraphRecorder` runs during the first recorded step only: it tags
the output of every recorded module call and, at each call, walks the autograd graph back
from the call's input to the nearest tagged outputs, so it learns which layers feed which
(and through what: a concatenation, the attention softmax), which blocks add their input to
their output (a residual stream) and which layers lie on a block's shortcut. No torch.fx:
the graph autograd builds anyway is read, nothing is traced. The result is a plain dict
(JSON-able), kept as `trace.structure`; diagnose/structure.py turns it into verdict inputs.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from torch import Tensor, nn

# A block must hold at least this many weight layers (modules owning a >= 2-D parameter:
# Linear, Conv, Embedding, attention projections; norms and scales own 1-D ones). One weight
# layer with its norm (a ResNet "conv layer", a NetSpec Linear + BatchNorm) is a layer, not a
# block; a residual unit has two or more.
MIN_BLOCK_WEIGHT_LAYERS = 2
# A repeated container needs at least this many children of one class.
MIN_REPEATS = 2
# Autograd nodes visited at most per walk (a walk stops at the nearest recorded outputs; long
# walks happen only across big functional parts such as a loss or a custom attention kernel).
MAX_WALK = 4000


def _weight_layers(module: nn.Module) -> int:
    """Modules in `module`'s subtree (itself included) that own a parameter with >= 2 dimensions."""
    return sum(any(p.dim() >= 2 for p in m._parameters.values() if p is not None) for m in module.modules())


def _repeated_children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The children of `module` that repeat one class (MIN_REPEATS or more) and are blocks by size."""
    children = [(n, c) for n, c in module.named_children() if _weight_layers(c) >= MIN_BLOCK_WEIGHT_LAYERS]
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


def _tensors(obj: object) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)
