"""Small fixture models, each named after the edge case it exercises (plain nn.Modules).

Every model has `example(batch, seed) -> (x, y)`: a batch it accepts and class targets for
F.cross_entropy on its output. Import from anywhere: `from models import TiedWeights` (tests/
is on sys.path under pytest) — no test-framework dependency here.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

N_CLASSES = 5


def backward_and_step(loss: Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> None:
    """The training step's second half, with a GradScaler's scale/step/update when one is given."""
    if scaler is None:
        loss.backward()
        opt.step()
        return
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def _features(batch: int, seed: int, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=gen), torch.randint(0, N_CLASSES, (batch,), generator=gen)


class TiedWeights(nn.Module):
    """Embedding and output projection share one weight tensor (language-model style)."""

    vocab, dim = 12, 8

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(self.vocab, self.dim)
        self.hidden = nn.Linear(self.dim, self.dim)
        self.decode = nn.Linear(self.dim, self.vocab)
        self.decode.weight = self.embed.weight  # tied: one Parameter, two owners

    def forward(self, tokens: Tensor) -> Tensor:
        return self.decode(torch.tanh(self.hidden(self.embed(tokens))))[:, :N_CLASSES]

    def example(self, batch: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return (torch.randint(0, self.vocab, (batch,), generator=gen),
                torch.randint(0, N_CLASSES, (batch,), generator=gen))


class ReusedModule(nn.Module):
    """One Linear applied twice in a forward: one layer, two calls."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 10)
        self.shared = nn.Linear(10, 10)
        self.head = nn.Linear(10, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.shared(h))
        return self.head(h)

    def example(self, batch: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
        return _features(batch, seed, (6,))


class FrozenLayers(nn.Module):
    """First and third Linear frozen (requires_grad=False): layers without gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(6, 10), nn.Linear(10, 10), nn.Linear(10, 10)])
        self.head = nn.Linear(10, N_CLASSES)
        for i in (0, 2):
            self.layers[i].requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)

    def example(self, batch: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
        return _features(batch, seed, (6,))


class NoGradBranch(nn.Module):
    """A side branch computed under torch.no_grad() and added to the main path."""

    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Linear(6, 10)
        self.side = nn.Linear(6, 10)
        self.head = nn.Linear(10, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            side = self.side(x)
        return self.head(torch.tanh(self.main(x) + side))

    def example(self, batch: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
        return _features(batch, seed, (6,))


class NoParameters(nn.Module):
    """Nothing to train: watch() must refuse it."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)[:, :N_CLASSES]

    def example(self, batch: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
        return _features(batch, seed, (6,))


class FunctionalActivations(nn.Module):
    """Activations applied as functions (F.relu, torch.sigmoid, ...), one through a flatten."""

    ACTIVATIONS = (None, "relu", "sigmoid", "tanh", "leaky_relu", "gelu")  # what each layer receives

    def __init__(self) -> None:
        super().__init__()
        self.l0 = nn.Linear(6, 12)
        self.l1 = nn.Linear(12, 12)
        self.l2 = nn.Linear(12, 12)
        self.l3 = nn.Linear(12, 12)
        self.l4 = nn.Linear(12, 12)
        self.head = nn.Linear(12, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.l0(x))
        h = torch.sigmoid(self.l1(h))
        h = torch.tanh(self.l2(h).view(-1, 3, 4)).flatten(1)  # the activation sits behind a view
        h = F.leaky_relu(self.l3(h), 0.2)
        h = F.gelu(self.l4(h))
        return self.head(h)

    def example(self, batch: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
        return _features(batch, seed, (6,))


class SequentialInModuleDict(nn.Module):
    """nn.Sequential blocks inside an nn.ModuleDict, defined in a different order than used."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict({
            "head": nn.Sequential(nn.ReLU(), nn.Linear(10, N_CLASSES)),
            "encoder": nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 10)),
        })

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks["head"](self.blocks["encoder"](x))

    def example(self, batch: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
        return _features(batch, seed, (6,))


class LSTMModel(nn.Module):
    """An LSTM (tuple output) over a short sequence, classified from its last step."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.head = nn.Linear(8, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])

    def example(self, batch: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
        return _features(batch, seed, (5, 4))


class TinyTransformer(nn.Module):
    """nn.TransformerEncoder (MultiheadAttention applies its out_proj functionally)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        layer = nn.TransformerEncoderLayer(16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(16, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))

    def example(self, batch: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
        return _features(batch, seed, (6, 4))


class _Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)  # modifies bn1's output in place, as torchvision does
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class ResidualBNCNN(nn.Module):
    """A small ResNet: conv stem, two residual blocks with BatchNorm, pooled linear head."""

    def __init__(self, channels: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = nn.Sequential(_Block(channels), _Block(channels))
        self.head = nn.Linear(channels, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(F.relu(self.stem(x))).mean((2, 3)))

    def example(self, batch: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
        return _features(batch, seed, (1, 8, 8))


ALL = (TiedWeights, ReusedModule, FrozenLayers, NoGradBranch, FunctionalActivations,
       SequentialInModuleDict, LSTMModel, TinyTransformer, ResidualBNCNN)  # every model with parameters
