"""The diagnosis calibration corpus: models with a known ground truth.

Pathological members plant one cause (deep sigmoid, small or N(0,1) init, a too-high learning
rate, dead ReLUs from a negative bias, a bottleneck layer, unnormalised inputs); healthy
members must get a clean bill. Used by tests/test_diagnose.py and
benchmarks/diagnosis_accuracy.py (which imports this file by path).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from graddoctor import data as gd_data
from graddoctor.nets import NetSpec, build

BATCH = 128


@dataclass(frozen=True)
class Case:
    """One corpus member: how to build it, and the truth the diagnosis must find."""

    id: str
    make: Callable[[int], tuple[nn.Module, torch.Tensor, torch.Tensor, Callable | None]]
    kinds: frozenset = frozenset()  # expected finding kinds (empty: healthy)
    causes: tuple[str, ...] = ()  # acceptable named causes (one must be in the top two)
    planted: str | None = None  # layer where the gain drops/jumps (localisation truth)
    lr: float = 0.01  # SGD(momentum 0.9) learning rate for the training-time check
    at_init: bool = True  # is the pathology visible in the network as built?
    trains_away: bool = False  # does training itself heal it (then a trained net is judged healthy)?

    @property
    def healthy(self) -> bool:
        """True for the healthy members."""
        return not self.kinds


@functools.lru_cache(maxsize=2)
def _digits(image: bool) -> tuple[torch.Tensor, torch.Tensor]:
    d = gd_data.digits(seed=0, image=image)
    return d.x_train[:BATCH], d.y_train[:BATCH]


def mlp(depth: int, activation: str, init: str, width: int = 64, *, batchnorm: str = "none",
        residual: int = 0, residual_scale: float = 1.0, input_scale: float = 1.0,
        bias: float | None = None, scale_layer: tuple[int, float] | None = None, kind: str = "mlp"):
    """A factory for a NetSpec network on a digits batch, with optional planted defects."""
    def make(seed: int):
        x, y = _digits(kind == "cnn")
        spec = NetSpec(kind=kind, depth=depth, width=width, in_shape=tuple(x.shape[1:]),
                       activation=activation, init=init, batchnorm=batchnorm, residual=residual,
                       residual_scale=residual_scale)
        model = build(spec, seed=seed)
        with torch.no_grad():
            if bias is not None:
                for layer in model.body:
                    layer.linear.bias.fill_(bias)
            if scale_layer is not None:
                model.body[scale_layer[0]].linear.weight.mul_(scale_layer[1])
        return model, x * input_scale, y, None
    return make


class LSTMLanguageModel(nn.Module):
    """Embedding -> 2-layer LSTM -> decoder, at PyTorch's default initialisation."""

    def __init__(self, vocab: int = 50, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, num_layers=2, batch_first=True)
        self.decoder = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.lstm(self.embed(tokens))[0])


class TinyTransformer(nn.Module):
    """A 2-layer Transformer encoder classifier on float sequences (default init)."""

    def __init__(self, dim: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(8, dim)
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.inp(x)).mean(1))


def _lm(seed: int):
    torch.manual_seed(seed)
    tokens = torch.randint(0, 50, (32, 21))
    model = LSTMLanguageModel()
    loss = lambda out, y: nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    return model, tokens[:, :-1], tokens[:, 1:], loss


def _transformer(seed: int):
    torch.manual_seed(seed)
    x = torch.randn(32, 10, 8)
    return TinyTransformer(), x, (x.sum((1, 2)) > 0).long() + 2 * (x[:, 0, 0] > 0).long(), None


V, E = frozenset({"vanishing"}), frozenset({"exploding"})

PATHOLOGICAL: list[Case] = [
    Case("sigmoid-xavier-d10", mlp(10, "sigmoid", "xavier_normal"), V, ("saturating_activation",)),
    Case("sigmoid-xavier-d20", mlp(20, "sigmoid", "xavier_normal"), V, ("saturating_activation",)),
    Case("sigmoid-he-d20", mlp(20, "sigmoid", "he_normal"), V, ("saturating_activation",)),
    Case("sigmoid-small-d10", mlp(10, "sigmoid", "small"), V, ("saturating_activation", "init_too_small")),
    Case("sigmoid-large-d10", mlp(10, "sigmoid", "large", width=256), frozenset({"saturation"}),
         ("saturating_activation", "init_too_large")),
    Case("tanh-small-d10", mlp(10, "tanh", "small"), V, ("init_too_small",)),
    Case("tanh-small-d20", mlp(20, "tanh", "small"), V, ("init_too_small",)),
    Case("tanh-large-d20", mlp(20, "tanh", "large"), E, ("init_too_large",)),
    Case("relu-small-d20", mlp(20, "relu", "small"), V, ("init_too_small",)),
    Case("relu-small-d30", mlp(30, "relu", "small", width=32), V, ("init_too_small",)),
    Case("relu-default-d20", mlp(20, "relu", "torch_default"), V, ("init_too_small", "chain_product_depth")),
    Case("relu-large-d10", mlp(10, "relu", "large"), E, ("init_too_large",)),
    Case("relu-large-d20", mlp(20, "relu", "large"), E, ("init_too_large",)),
    Case("leaky-large-d15", mlp(15, "leaky_relu", "large"), E, ("init_too_large",)),
    Case("identity-small-d10", mlp(10, "identity", "small"), V, ("init_too_small",)),
    Case("selu-small-d15", mlp(15, "selu", "small"), V, ("init_too_small",)),
    Case("relu-bottleneck-d20", mlp(20, "relu", "he_normal", scale_layer=(10, 1e-3)), V,
         ("init_too_small",), planted="body.10.linear", trains_away=True),
    Case("relu-blowup-layer-d20", mlp(20, "relu", "he_normal", scale_layer=(12, 1e3)), E,
         ("init_too_large",), planted="body.12.linear"),
    Case("tanh-bottleneck-d12", mlp(12, "tanh", "xavier_normal", scale_layer=(6, 1e-3)), V,
         ("init_too_small",), planted="body.6.linear", trains_away=True),
    Case("relu-deadbias-d10", mlp(10, "relu", "he_normal", bias=-3.0), frozenset({"dead_units"}),
         ("dead_relu",)),
    Case("relu-deadbias-d6", mlp(6, "relu", "he_normal", bias=-2.0), frozenset({"dead_units"}),
         ("dead_relu",)),
    Case("tanh-rawinput-d10", mlp(10, "tanh", "xavier_normal", input_scale=300.0),
         frozenset({"saturation"}), ("input_scale",)),
    Case("sigmoid-rawinput-d5", mlp(5, "sigmoid", "xavier_normal", input_scale=300.0),
         frozenset({"saturation"}), ("input_scale",)),
    Case("cnn-small-d8", mlp(8, "relu", "small", width=16, kind="cnn"), V, ("init_too_small",)),
    Case("cnn-sigmoid-d10", mlp(10, "sigmoid", "xavier_normal", width=16, kind="cnn"), V,
         ("saturating_activation",)),
    Case("relu-lr-too-high-d10", mlp(10, "relu", "he_normal"), E, ("learning_rate_too_high",),
         lr=3.0, at_init=False),
    # a too-high step size drives tanh units to saturation rather than to overflow
    Case("tanh-lr-too-high-d8", mlp(8, "tanh", "xavier_normal"), frozenset({"saturation"}),
         ("learning_rate_too_high",),
         lr=20.0, at_init=False),
]

HEALTHY: list[Case] = [
    Case("relu-he-d10", mlp(10, "relu", "he_normal")),
    Case("relu-he-d20", mlp(20, "relu", "he_normal")),
    Case("relu-he-d30", mlp(30, "relu", "he_normal")),
    Case("relu-heuniform-d20", mlp(20, "relu", "he_uniform")),
    Case("relu-orthogonal-d20", mlp(20, "relu", "orthogonal")),
    Case("leaky-he-d20", mlp(20, "leaky_relu", "he_normal")),
    Case("prelu-he-d10", mlp(10, "prelu", "he_normal")),
    Case("elu-he-d10", mlp(10, "elu", "he_normal")),
    Case("selu-lecun-d20", mlp(20, "selu", "lecun_normal")),
    Case("tanh-xavier-d5", mlp(5, "tanh", "xavier_normal")),
    Case("tanh-xavier-d10", mlp(10, "tanh", "xavier_normal")),
    Case("relu-bn-d12", mlp(12, "relu", "he_normal", batchnorm="before_activation")),
    Case("relu-bn-after-d12", mlp(12, "relu", "he_normal", batchnorm="after_activation")),
    Case("residual-bn-d30", mlp(30, "relu", "he_normal", batchnorm="before_activation", residual=2)),
    Case("residual-bn-d50", mlp(50, "relu", "he_normal", width=32, batchnorm="before_activation", residual=2)),
    Case("residual-scaled-d30", mlp(30, "relu", "he_normal", residual=2, residual_scale=1 / math.sqrt(15))),
    Case("cnn-bn-d6", mlp(6, "relu", "he_normal", width=16, batchnorm="before_activation", kind="cnn")),
    Case("cnn-he-d6", mlp(6, "relu", "he_normal", width=16, kind="cnn")),
    Case("lstm-lm", _lm),
    Case("transformer", _transformer),
]

CORPUS: list[Case] = PATHOLOGICAL + HEALTHY
