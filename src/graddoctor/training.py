"""The minimal training loop: seeded, probe-aware, with a progress bar and a history."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import progress
from .data import Dataset
from .errors import GradDoctorError, unknown

OPTIMIZERS = ("sgd", "adam")
LOSSES = ("cross_entropy", "mse")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimizer, step size, budget, seed."""

    optimizer: str = "sgd"  # "sgd" | "adam"
    lr: float = 0.01
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0
    loss: str = "cross_entropy"  # "cross_entropy" | "mse" (targets one-hot)
    epochs: int = 10
    batch_size: int = 64
    clip_norm: float | None = None  # clip the global gradient norm to this value
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    seed: int = 0  # data order

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise unknown("optimizer", self.optimizer, OPTIMIZERS)
        if self.loss not in LOSSES:
            raise unknown("loss", self.loss, LOSSES)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise GradDoctorError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise GradDoctorError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.epochs < 1 or self.batch_size < 1:
            raise GradDoctorError("epochs and batch_size must be at least 1")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise GradDoctorError(f"clip_norm must be positive, got {self.clip_norm}")
        if self.max_steps is not None and self.max_steps < 1:
            raise GradDoctorError(f"max_steps must be at least 1 (or None: use epochs), got {self.max_steps}")
        if not self.weight_decay >= 0:
            raise GradDoctorError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


@dataclass
class History:
    """Per-epoch train/validation loss and accuracy, per-step loss, and divergence."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)
    diverged_at: int | None = None  # first step whose loss was NaN/Inf (training stopped)
    seconds: float = 0.0

    @property
    def final_val_acc(self) -> float:
        """Validation accuracy after the last epoch (nan if none)."""
        return self.val_acc[-1] if self.val_acc else float("nan")

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer a TrainConfig describes."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise GradDoctorError("the model has no trainable parameters")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def loss_fn(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """Loss by name; `mse` one-hot encodes class-index targets."""
    if name == "cross_entropy":
        return F.cross_entropy
    if name == "mse":
        def mse(out: Tensor, y: Tensor) -> Tensor:
            if not y.is_floating_point():
                y = F.one_hot(y, out.shape[-1]).to(out.dtype)
            return F.mse_loss(out, y)
        return mse
    raise unknown("loss", name, LOSSES)


def batches(x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator) -> Iterable[tuple[Tensor, Tensor]]:
    """Shuffled mini-batches (the order depends only on the generator's seed)."""
    order = torch.randperm(len(x), generator=generator)
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, loss: Callable, batch_size: int = 512) -> tuple[float, float]:
    """(mean loss, accuracy) over a data set, in eval mode; the mode is restored (nan if empty)."""
    if len(x) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    total, correct = 0.0, 0
    try:
        for i in range(0, len(x), batch_size):
            out = model(x[i:i + batch_size])
            total += float(loss(out, y[i:i + batch_size])) * len(out)
            if not y.is_floating_point():
                correct += int((out.argmax(-1) == y[i:i + batch_size]).sum())
    finally:
        model.train(was_training)
    return total / len(x), correct / len(x)


def train(model: nn.Module, data: Dataset, config: TrainConfig = TrainConfig(), *,
          probe: object | None = None, optimizer: torch.optim.Optimizer | None = None,
          on_step: Callable[[int, float], None] | None = None, progress_bar: bool = True) -> History:
    """Train `model` on `data`; a probe (graddoctor.watch) records every step it is asked to."""
    import time

    dtype = next((p.dtype for p in model.parameters()), None)
    if dtype is None:
        raise GradDoctorError("the model has no parameters to train")
    device = next(model.parameters()).device
    data = data.to(dtype=dtype, device=device)
    if len(data.x_train) == 0:
        raise GradDoctorError(f"{data.name}: the training set is empty; lower val_fraction")
    opt = optimizer or make_optimizer(model, config)
    if probe is not None and hasattr(probe, "bind_optimizer"):
        probe.bind_optimizer(opt)  # lets the probe measure update/weight ratios around opt.step
    crit = loss_fn(config.loss)
    gen = torch.Generator().manual_seed(config.seed)
    hist = History()
    steps_per_epoch = math.ceil(len(data.x_train) / config.batch_size)
    total = config.max_steps or steps_per_epoch * config.epochs
    epochs = math.ceil(total / steps_per_epoch)
    step, t0, shown = 0, time.perf_counter(), {}
    model.train()
    with progress.bar(total, "training", enabled=progress_bar) as bar:
        for epoch in range(epochs):
            for xb, yb in batches(data.x_train, data.y_train, config.batch_size, gen):
                loss = crit(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                value = float(loss.detach())  # the loop's one host sync per step
                finite = math.isfinite(value)
                if finite:
                    if config.clip_norm is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
                    opt.step()
                if probe is not None:
                    probe.step(loss)
                hist.step_loss.append(value)
                if on_step is not None:
                    on_step(step, value)
                step += 1
                bar.update(1, epoch=f"{epoch + 1}/{epochs}", loss=f"{value:.4f}", **shown)
                if not finite:
                    hist.diverged_at = step - 1
                    break
                if step >= total:
                    break
            tl, ta = evaluate(model, data.x_train, data.y_train, crit)
            vl, va = evaluate(model, data.x_val, data.y_val, crit)
            for key, v in (("epoch", epoch + 1), ("train_loss", tl), ("train_acc", ta),
                           ("val_loss", vl), ("val_acc", va)):
                getattr(hist, key).append(v)
            shown = {"train_acc": f"{ta:.3f}", "val_acc": f"{va:.3f}"}
            bar.update(0, epoch=f"{epoch + 1}/{epochs}", loss=f"{value:.4f}", **shown)
            if hist.diverged_at is not None or step >= total:
                break
    hist.seconds = time.perf_counter() - t0
    return hist
