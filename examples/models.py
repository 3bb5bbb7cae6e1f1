"""Example model factories for `graddoctor check` and `graddoctor treat`.

A factory takes no arguments and returns a model, or (model, data, loss_fn) where data is an
(inputs, targets) batch, a DataLoader or a graddoctor Dataset.

    graddoctor check examples/models.py:deep_sigmoid --input-shape 64
    graddoctor check examples/models.py:digits_mlp --steps 20
"""
import torch
from torch import nn


def _mlp(depth: int, width: int, activation: type[nn.Module], init=None, inputs: int = 64,
         classes: int = 10) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        lin = nn.Linear(inputs if i == 0 else width, width)
        if init is not None:
            init(lin.weight)
            nn.init.zeros_(lin.bias)
        layers += [lin, activation()]
    return nn.Sequential(*layers, nn.Linear(width, classes))


def deep_sigmoid() -> nn.Module:
    """A plain 20-layer sigmoid MLP with Glorot init: the classic vanishing gradient."""
    torch.manual_seed(0)
    return _mlp(20, 64, nn.Sigmoid, nn.init.xavier_normal_)


def healthy_relu() -> nn.Module:
    """A 10-layer ReLU MLP with He init: gradients flow."""
    torch.manual_seed(0)
    return _mlp(10, 64, nn.ReLU, lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"))


def exploding_relu() -> nn.Module:
    """ReLU with N(0, 1) weights: each layer multiplies the error signal by ~sqrt(width / 2)."""
    torch.manual_seed(0)
    return _mlp(12, 64, nn.ReLU, lambda w: nn.init.normal_(w, 0.0, 1.0))


def digits_mlp():
    """A deep tanh MLP with tiny weights, with the bundled digits data and its loss."""
    from graddoctor import data

    torch.manual_seed(0)
    d = data.digits(seed=0)
    model = _mlp(15, 64, nn.Tanh, lambda w: nn.init.normal_(w, 0.0, 0.01))
    return model, (d.x_train[:256], d.y_train[:256]), nn.functional.cross_entropy


def small_cnn() -> nn.Module:
    """A 6-layer CNN with BatchNorm for 3x32x32 inputs (check with --input-shape 3x32x32)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(6):
        layers += [nn.Conv2d(3 if i == 0 else 16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
