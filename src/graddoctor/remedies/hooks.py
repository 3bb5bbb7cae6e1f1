"""Changes to a network that keep its module names: norms, skips, scales and swaps as hooks.

A remedy that adds something to the user's network (a norm after a layer, a skip around a
block, a LayerScale, an activation function swapped inside forward(), input standardisation)
does it with forward hooks on the existing modules plus new child modules, parameters or
buffers under reserved `gd_*` names. The existing parameters keep their names, so the treated
state dict is the user's plus a few new keys, and `apply_changes` (replay.py) rebuilds the same
thing on a fresh instance of the user's class. The hook functions are module-level and keep
their state on the module, so deep copies of a treated model work like the original.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

NORM = "gd_norm"  # child module: the norm applied to the module's output
SCALE = "gd_layer_scale"  # parameter: per-channel LayerScale gamma on the module's output
MEAN, STD = "gd_input_mean", "gd_input_std"  # buffers on the root: input standardisation
# Activation functions a functional swap substitutes, and what with (PReLU needs a module).
SWAP_TO = {"relu": torch.relu, "leaky_relu": lambda t: F.leaky_relu(t, 0.01), "selu": torch.selu}
SWAPPABLE = {torch.sigmoid: "sigmoid", torch.Tensor.sigmoid: "sigmoid", torch.special.expit: "sigmoid",
             torch.tanh: "tanh", torch.Tensor.tanh: "tanh"}


def _replace_first(out: object, new: Tensor) -> object:
    """`out` with its first tensor replaced (a tensor, or a tuple whose first item is one)."""
    if isinstance(out, Tensor):
        return new
    return (new, *out[1:])


def _first(obj: object) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, tuple) and obj and isinstance(obj[0], Tensor):
        return obj[0]
    return None


# -- a norm after a module's output ---------------------------------------------------------
def _norm_hook(module: nn.Module, args: tuple, out: object) -> object:
    y = _first(out)
    return out if y is None else _replace_first(out, getattr(module, NORM)(y))


def add_norm(module: nn.Module, norm: nn.Module) -> None:
    """module(x) becomes norm(module(x)); the norm is the child `gd_norm`."""
    module.add_module(NORM, norm)
    module.register_forward_hook(_norm_hook)


# -- a skip connection around a block (one module, or a run of modules) ---------------------
class _Skip:
    """The state a skip shares between its first module (input) and its last (output)."""

    def __init__(self, scale: float) -> None:
        self.scale, self.x = scale, None


def _skip_in(module: nn.Module, args: tuple, kwargs: dict) -> None:
    x = _first(args) if args else kwargs.get("hidden_states")
    module._gd_skip_in.x = x


def _skip_out(module: nn.Module, args: tuple, out: object) -> object:
    skip = module._gd_skip_out
    x, skip.x = skip.x, None
    y = _first(out)
    if x is None or y is None or x.shape != y.shape:
        return out
    return _replace_first(out, x + skip.scale * y)


def add_skip(first: nn.Module, last: nn.Module, scale: float) -> None:
    """The run first..last computes x + scale * run(x) (x: the first module's input)."""
    skip = _Skip(scale)
    object.__setattr__(first, "_gd_skip_in", skip)  # a plain attribute, not a submodule
    object.__setattr__(last, "_gd_skip_out", skip)
    first.register_forward_pre_hook(_skip_in, with_kwargs=True)
    last.register_forward_hook(_skip_out, always_call=True)


# -- LayerScale: a learnable per-channel factor on a module's output ------------------------
def _scale_hook(module: nn.Module, args: tuple, out: object) -> object:
    y = _first(out)
    if y is None:
        return out
    gamma = getattr(module, SCALE)
    shape = [1] * y.dim()
    shape[module._gd_scale_dim] = -1
    return _replace_first(out, y * gamma.view(shape))


def add_layer_scale(module: nn.Module, channels: int, dim: int, init: float) -> None:
    """module(x) becomes gamma * module(x), gamma (channels,) learnable, initialised to `init`."""
    ref = next(module.parameters())
    module.register_parameter(SCALE, nn.Parameter(torch.full((channels,), init, dtype=ref.dtype,
                                                             device=ref.device)))
    object.__setattr__(module, "_gd_scale_dim", dim)
    module.register_forward_hook(_scale_hook)


# -- standardised inputs ----------------------------------------------------------------------
def _standardize(module: nn.Module, args: tuple) -> tuple | None:
    if not args or not isinstance(args[0], Tensor) or not args[0].is_floating_point():
        return None
    return ((args[0] - getattr(module, MEAN)) / getattr(module, STD), *args[1:])


def standardize_inputs(model: nn.Module, mean: Tensor, std: Tensor) -> None:
    """model(x) sees (x - mean) / std; mean and std are buffers of the model (in its state dict)."""
    model.register_buffer(MEAN, mean.detach().clone())
    model.register_buffer(STD, std.detach().clone())
    model.register_forward_pre_hook(_standardize)


# -- activation functions applied in forward(), swapped --------------------------------------
class _Swap(TorchFunctionMode):
    """During the root's forward: sigmoid/tanh applied to a marked module's output -> the target."""

    def __init__(self) -> None:
        super().__init__()
        self.marked: dict[int, tuple[Tensor, dict]] = {}  # id(output) -> (output, {function: target})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = SWAPPABLE.get(func)
        if name is not None and args and not kwargs:
            hit = self.marked.get(id(args[0]))
            if hit is not None and hit[0] is args[0] and name in hit[1]:
                return SWAP_TO[hit[1][name]](args[0])
        return func(*args, **(kwargs or {}))


def _mark(module: nn.Module, args: tuple, out: object) -> None:
    y = _first(out)
    if y is not None:
        module._gd_swap.marked[id(y)] = (y, module._gd_swap_map)


def _swap_on(module: nn.Module, args: tuple) -> None:
    module._gd_swap.marked.clear()
    module._gd_swap.__enter__()


def _swap_off(module: nn.Module, args: tuple, out: object) -> None:
    module._gd_swap.__exit__(None, None, None)
    module._gd_swap.marked.clear()


def swap_function(root: nn.Module, producer: nn.Module, function: str, target: str) -> None:
    """In root's forward, `function` (sigmoid/tanh) applied to producer's output becomes `target`."""
    mode = getattr(root, "_gd_swap", None)
    if mode is None:
        mode = _Swap()
        object.__setattr__(root, "_gd_swap", mode)
        root.register_forward_pre_hook(_swap_on)
        root.register_forward_hook(_swap_off, always_call=True)
    if getattr(producer, "_gd_swap_map", None) is None:
        object.__setattr__(producer, "_gd_swap", mode)
        object.__setattr__(producer, "_gd_swap_map", {})
        producer.register_forward_hook(_mark)
    producer._gd_swap_map[function] = target
