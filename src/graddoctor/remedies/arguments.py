"""treat()'s arguments, normalised: the data as a Dataset, the loss as a name, the untreated Patient."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..data import Dataset, from_loader, from_tensors
from ..errors import GradDoctorError
from ..nets import NetSpec
from ..training import TrainConfig
from .base import Patient

# The losses train() knows, and the callables that mean the same thing.
_LOSS_NAMES: dict[object, str] = {F.cross_entropy: "cross_entropy", nn.CrossEntropyLoss: "cross_entropy",
                                  F.mse_loss: "mse", nn.MSELoss: "mse"}


def loss_name(loss_fn: object, config: TrainConfig) -> str:
    """The TrainConfig loss name for treat's loss_fn argument (None: the config's)."""
    if loss_fn is None:
        return config.loss
    if isinstance(loss_fn, str):
        return TrainConfig(loss=loss_fn).loss  # validates the name
    name = _LOSS_NAMES.get(loss_fn) or _LOSS_NAMES.get(type(loss_fn))
    if name is None:
        raise GradDoctorError(f"treat trains with graddoctor.train, which supports the losses "
                              f"'cross_entropy' and 'mse'; got {loss_fn!r}: "
                              f"pass loss_fn='cross_entropy' or 'mse'")
    return name


def as_dataset(data: object, seed: int = 0) -> Dataset:
    """A Dataset from a Dataset, an (inputs, targets) pair of tensors, or a DataLoader."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return from_tensors(data[0], data[1], seed=seed)
    if data is None:
        raise GradDoctorError("treat needs training data: a graddoctor Dataset, (inputs, targets) "
                              "or a DataLoader")
    return from_loader(data, seed=seed)


def patient_from(model_factory: NetSpec | nn.Module | Callable[[], nn.Module], config: TrainConfig,
                 seed: int) -> Patient:
    """The untreated Patient: a NetSpec, or the user's model (called once if a factory, seeded)."""
    if isinstance(model_factory, NetSpec):
        return Patient(config, spec=model_factory)
    torch.manual_seed(seed)
    model = model_factory if isinstance(model_factory, nn.Module) else model_factory()
    if not isinstance(model, nn.Module):
        raise GradDoctorError(f"model_factory must be a NetSpec, an nn.Module or a function returning "
                              f"one; it returned {type(model).__name__}")
    return Patient(config, model=model)  # a template: Patient.build() trains deep copies of it


def prior_loss(data: Dataset, loss: str) -> float:
    """Training loss of a constant prediction of the class frequencies: what learning nothing gets."""
    y = data.y_train
    if y.is_floating_point():  # regression targets: the best constant is their mean
        return float(((y - y.mean(0)) ** 2).mean()) if loss == "mse" else math.inf
    p = torch.bincount(y.flatten(), minlength=data.n_classes).double() / y.numel()
    if loss == "mse":  # one-hot targets against p: mean over classes of p (1 - p)
        return float((p * (1 - p)).mean())
    return float(-(p[p > 0] * p[p > 0].log()).sum())  # cross-entropy: the entropy of the labels
