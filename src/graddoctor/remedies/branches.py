"""The residual branches of a network's repeated blocks, read off one forward's autograd graph.

For each repeated block (a transformer layer, a ResNet unit) whose output adds its input to
something: the module whose output is that something, the branch's *exit* (GPT-2's attention
and MLP `c_proj`, a ResNet unit's last BatchNorm). At every add behind the block's output, the
operand that reaches the block's input without passing a weight layer is the stream; the
nearest module output behind the other operand is the exit (through dropout, views and a
LayerScale multiplication, which is noted). Post-LN blocks (LN(x + f(x))) count: norms are
not weight layers. What the structure-scaled remedies need, nothing more.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from .base import Sample, with_hooks
from .hooks import SCALE
from .residual import MIN_RUN, repeated_blocks
from .tracing import is_norm, is_weight_layer

MAX_NODES = 20000  # autograd nodes visited per block at most
ADDS = frozenset({"AddBackward0", "AddBackward1"})


@dataclass
class Exit:
    """The last module of one residual branch."""

    path: str
    norm: bool  # a normalisation layer (zero-initialising its weight silences the branch)
    scaled: bool  # a learnable per-channel factor (LayerScale) sits between it and the add
    channels: int  # size of its output's channel axis
    dim: int  # that axis (-1 for features last, 1 for convolution maps)


@dataclass
class Branches:
    """Every repeated block with a skip, and its branch exits."""

    blocks: dict[str, list[Exit]] = field(default_factory=dict)

    @property
    def exits(self) -> list[Exit]:
        """All exits, block by block."""
        return [e for es in self.blocks.values() for e in es]


def _first(obj: object) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], Tensor):
        return obj[0]
    return None


def _is_param(node: object) -> bool:
    return type(node).__name__ == "AccumulateGrad" and getattr(node, "variable", None) is not None


def _stream(node: object, start: object, weight_out: set, memo: dict) -> bool:
    """Does `node` reach the block input `start` without passing a weight layer's output?"""
    stack, seen = [node], set()
    while stack and len(seen) < MAX_NODES:
        n = stack.pop()
        if n is None or n in seen:
            continue
        if n is start:
            return True
        seen.add(n)
        if n in memo:
            if memo[n]:
                return True
            continue
        if n in weight_out or _is_param(n):
            continue
        stack.extend(m for m, _ in n.next_functions)
    return False


def _exit_behind(node: object, outputs: dict, start: object) -> tuple[str | None, bool]:
    """The nearest module output behind `node` (the branch exit), and whether a parameter multiplied it."""
    scaled, stack, seen = False, [node], set()
    while stack and len(seen) < 64:
        n = stack.pop(0)
        if n is None or n in seen or n is start:
            continue
        seen.add(n)
        if n in outputs:
            return outputs[n], scaled
        kids = [m for m, _ in n.next_functions if m is not None]
        if type(n).__name__ == "MulBackward0" and any(_is_param(m) for m in kids):
            scaled = True
        stack.extend(m for m in kids if not _is_param(m))
    return None, scaled


def _analyse(start: object, end: object, outputs: dict, weight_out: set) -> list[tuple[str, bool]]:
    """(exit path, scaled) of every add between the block input `start` and its output `end`."""
    found, memo, stack, seen = [], {}, [end], set()
    while stack and len(seen) < MAX_NODES:
        n = stack.pop()
        if n is None or n in seen or n is start or _is_param(n):
            continue
        seen.add(n)
        kids = [m for m, _ in n.next_functions]
        if type(n).__name__ in ADDS and len(kids) == 2 and all(k is not None for k in kids):
            side = [_stream(k, start, weight_out, memo) for k in kids]
            if side[0] != side[1]:
                path, scaled = _exit_behind(kids[side.index(False)], outputs, start)
                if path is not None:
                    found.append((path, scaled))
        stack.extend(kids)
    return list(dict.fromkeys(found))


def residual_branches(net: nn.Module, sample: Sample) -> Branches:
    """The exits of the residual branches of every repeated block (one forward of the sample)."""
    names = {m: n for n, m in net.named_modules()}
    blocks = repeated_blocks(net)
    if len(blocks) < MIN_RUN:
        return Branches()
    leaves = [m for m in names if any(True for _ in m.parameters(recurse=False)) and (is_weight_layer(m) or is_norm(m))]
    outputs: dict[object, str] = {}  # grad_fn of a leaf module's output -> its path
    weight_out: set = set()
    shapes: dict[str, tuple] = {}
    inputs: dict[str, object] = {}
    result = Branches()

    def leaf_post(mod, args, out):
        y = _first(out)
        if y is not None and y.grad_fn is not None:
            outputs.setdefault(y.grad_fn, names[mod])
            shapes.setdefault(names[mod], tuple(y.shape))
            if is_weight_layer(mod):
                weight_out.add(y.grad_fn)

    def block_pre(mod, args, kwargs):
        x = _first(args) if args else kwargs.get("hidden_states")
        inputs[names[mod]] = x.grad_fn if isinstance(x, Tensor) else None

    def block_post(mod, args, kwargs, out):
        path, y = names[mod], _first(out)
        start = inputs.pop(path, None)
        if start is None or y is None or y.grad_fn is None or path in result.blocks:
            return
        inside = {o: p for o, p in outputs.items() if p.startswith(path + ".")}
        exits = []
        for p, scaled in _analyse(start, y.grad_fn, inside, weight_out):
            shape = shapes.get(p, ())
            conv = isinstance(net.get_submodule(p), (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or (
                len(shape) == 4 and "BatchNorm" in type(net.get_submodule(p)).__name__)
            dim = 1 if conv else -1
            mod = net.get_submodule(p)
            scaled = scaled or hasattr(mod, SCALE)  # graddoctor's own LayerScale works by a hook on it
            exits.append(Exit(p, is_norm(mod), scaled, shape[dim] if shape else 0, dim))
        if exits:
            result.blocks[path] = exits

    def register(model: nn.Module) -> list:
        hs = [m.register_forward_hook(leaf_post) for m in leaves]
        for b in blocks:
            mod = model.get_submodule(b)
            hs += [mod.register_forward_pre_hook(block_pre, with_kwargs=True),
                   mod.register_forward_hook(block_post, with_kwargs=True)]
        return hs

    with_hooks(net, register, lambda: sample.run(net))
    return result
