"""Example model factories for `graddoctor check` and `graddoctor treat`.

A factory takes no arguments and returns a model, or (model, data, loss_fn) where data is an
(inputs, targets) batch, a DataLoader or a graddoctor Dataset, or (model, loader, train_step,
make_optimizer): your own batches, loss and optimizer (see graddoctor/cli/factory.py).

    graddoctor check examples/models.py:deep_sigmoid --input-shape 64
    graddoctor check examples/models.py:digits_mlp --steps 20
    graddoctor check examples/models.py:digits_training --steps 30
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


class _DictOutput(nn.Module):
    """A model that returns a dict, as many libraries' models do (the loss comes from the train_step)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, pixels: torch.Tensor) -> dict:
        return {"logits": self.body(pixels), "features": pixels}


def digits_training():
    """Your own training: a DataLoader of digits batches, a train_step and an Adam optimizer.

    The model returns a dict; the step takes what it needs from the batch (a dict too) and
    returns the loss. `graddoctor check --steps N` trains N steps with these, batch after batch.
    """
    from graddoctor import data

    torch.manual_seed(0)
    d = data.digits(seed=0)
    model = _DictOutput(_mlp(12, 64, nn.Sigmoid, nn.init.xavier_normal_))
    samples = [{"pixels": x, "label": y} for x, y in zip(d.x_train, d.y_train)]
    loader = torch.utils.data.DataLoader(samples, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))

    def train_step(model: nn.Module, batch: dict) -> torch.Tensor:
        return nn.functional.cross_entropy(model(batch["pixels"])["logits"], batch["label"])

    def make_optimizer(params) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=1e-3)

    return model, loader, train_step, make_optimizer
