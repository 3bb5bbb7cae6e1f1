"""NetSpec -> nn.Module: deep MLPs and CNNs where every cause and remedy is one field away."""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import Tensor, nn

from . import activations, init
from .errors import GradDoctorError, unknown

KINDS = ("mlp", "cnn")
BATCHNORM = ("none", "before_activation", "after_activation")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class NetSpec:
    """A deep network described by its gradient-relevant choices."""

    kind: str = "mlp"  # "mlp" (Linear stack) or "cnn" (3x3 conv stack, avg-pool, linear head)
    depth: int = 5  # hidden layers; "deep" means more than three
    width: int = 64  # units (mlp) or channels (cnn) per hidden layer
    in_shape: tuple[int, ...] = (64,)  # one sample's shape: (features,) or (channels, h, w)
    out_features: int = 10  # classes (or regression targets)
    activation: str = "relu"  # a name from graddoctor.activations.ACTIVATIONS
    negative_slope: float = 0.01  # leaky_relu's slope
    init: str = "torch_default"  # a name from graddoctor.init.INITS
    batchnorm: str = "none"  # "none" | "before_activation" | "after_activation"
    residual: int = 0  # 0: no skips; k: a skip connection around every block of k layers
    residual_scale: float = 1.0  # branch scale alpha in y = shortcut(x) + alpha * f(x)
    bias: bool = True
    dtype: str = "float32"  # "float32" | "float64" (deep ratios underflow float32)
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # free-form notes

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise unknown("kind", self.kind, KINDS)
        activations.get(self.activation)
        if self.init not in init.INITS:
            raise unknown("init", self.init, init.INITS)
        if self.batchnorm not in BATCHNORM:
            raise unknown("batchnorm placement", self.batchnorm, BATCHNORM)
        if self.dtype not in DTYPES:
            raise unknown("dtype", self.dtype, DTYPES)
        for name in ("depth", "width", "out_features"):
            if int(getattr(self, name)) < 1:
                raise GradDoctorError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.residual < 0:
            raise GradDoctorError(f"residual must be 0 (off) or a block size >= 1, got {self.residual}")
        want = 1 if self.kind == "mlp" else 3
        shape = (int(self.in_shape),) if isinstance(self.in_shape, int) else tuple(int(s) for s in self.in_shape)
        if len(shape) != want and not (self.kind == "mlp" and len(shape) >= 1):
            raise GradDoctorError(f"a {self.kind} needs in_shape with {want} dimension(s), got {shape}")
        object.__setattr__(self, "in_shape", shape)

    def with_(self, **changes) -> NetSpec:
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready dict of the spec."""
        d = asdict(self)
        d["in_shape"] = list(self.in_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> NetSpec:
        """Inverse of to_dict."""
        d = dict(d)
        d["in_shape"] = tuple(d.get("in_shape", (64,)))
        return cls(**d)

    def summary(self) -> str:
        """One line: '20x64 sigmoid mlp, xavier_normal, bn=none, residual=0'."""
        res = f", residual={self.residual}" + (f"x{self.residual_scale:g}" if self.residual_scale != 1 else "")
        return (f"{self.depth}x{self.width} {self.activation} {self.kind}, init={self.init}, "
                f"bn={self.batchnorm}{res if self.residual else ''}")

    def __str__(self) -> str:
        return json.dumps(self.to_dict())


class Layer(nn.Sequential):
    """One hidden layer: linear/conv, optional BatchNorm (before or after), activation."""


class ResidualBlock(nn.Module):
    """y = shortcut(x) + scale * branch(x); shortcut is identity when shapes match."""

    def __init__(self, branch: nn.Sequential, shortcut: nn.Module, scale: float) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.scale * self.branch(x)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


class DeepNet(nn.Module):
    """The network `build` returns: hidden stack (`body`) then a linear `head`."""

    def __init__(self, spec: NetSpec, body: nn.Sequential, pool: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.spec = spec
        self.body = body
        self.pool = pool
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        if self.spec.kind == "mlp":
            x = x.flatten(1)
        return self.head(self.pool(self.body(x)))

    def extra_repr(self) -> str:
        return f"{self.spec.summary()}; {count_parameters(self):,} trainable parameters"


def _layer(spec: NetSpec, n_in: int) -> Layer:
    conv = spec.kind == "cnn"
    lin = (nn.Conv2d(n_in, spec.width, 3, padding=1, bias=spec.bias) if conv
           else nn.Linear(n_in, spec.width, bias=spec.bias))
    init.initialise(lin, spec.init, spec.activation, spec.negative_slope)
    bn = (nn.BatchNorm2d if conv else nn.BatchNorm1d)(spec.width)
    act = activations.get(spec.activation).module(spec.negative_slope)
    parts = {"linear": lin}
    if spec.batchnorm == "before_activation":
        parts["bn"] = bn
    parts["act"] = act
    if spec.batchnorm == "after_activation":
        parts["bn"] = bn
    return Layer(OrderedDict(parts))  # named children: body.3.linear, body.3.act


def _shortcut(spec: NetSpec, n_in: int) -> nn.Module:
    if n_in == spec.width:
        return nn.Identity()
    proj = (nn.Conv2d(n_in, spec.width, 1, bias=False) if spec.kind == "cnn"
            else nn.Linear(n_in, spec.width, bias=False))
    init.initialise(proj, "lecun_normal" if spec.init == "torch_default" else "xavier_normal")
    return proj


def build(spec: NetSpec, seed: int | None = None) -> DeepNet:
    """Build the network a NetSpec describes (seeded if `seed` is given)."""
    if seed is not None:
        torch.manual_seed(seed)
    n_in = spec.in_shape[0] if spec.kind == "cnn" else math.prod(spec.in_shape)
    layers: list[nn.Module] = []
    if spec.residual:
        for start in range(0, spec.depth, spec.residual):
            k = min(spec.residual, spec.depth - start)
            branch = nn.Sequential(*[_layer(spec, n_in if i == 0 else spec.width) for i in range(k)])
            layers.append(ResidualBlock(branch, _shortcut(spec, n_in), spec.residual_scale))
            n_in = spec.width
    else:
        for _ in range(spec.depth):
            layers.append(_layer(spec, n_in))
            n_in = spec.width
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()) if spec.kind == "cnn" else nn.Identity()
    head = nn.Linear(spec.width, spec.out_features)
    if spec.init != "torch_default":
        # the head feeds the loss, not an activation: Glorot's formula (gain 1)
        init.initialise(head, "xavier_normal")
    model = DeepNet(spec, nn.Sequential(*layers), pool, head)
    return model.to(DTYPES[spec.dtype])


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())


def summary(model: nn.Module) -> list[tuple[str, str, int]]:
    """(qualified name, description, parameter count) of every leaf module, in definition order."""
    rows = []
    for name, mod in model.named_modules():
        if len(list(mod.children())) == 0 and not isinstance(mod, nn.Flatten):
            n = sum(p.numel() for p in mod.parameters(recurse=False))
            rows.append((name, repr(mod), n))
    return rows


def describe(model: nn.Module) -> str:
    """Plain-text summary: layers in order and the parameter count."""
    rows = summary(model)
    w = max((len(r[0]) for r in rows), default=4)
    lines = [f"{n:<{w}}  {d}" + (f"  [{p:,} params]" if p else "") for n, d, p in rows]
    lines.append(f"total: {count_parameters(model):,} trainable parameters")
    return "\n".join(lines)
