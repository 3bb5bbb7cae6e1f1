"""Data sets: the bundled `digits`, generated `spirals` and `gaussians`, or the user's tensors.

Nothing is downloaded: `digits` ships inside scikit-learn; the others are generated.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .errors import GradDoctorError, require, unknown

DATASETS = ("digits", "spirals", "gaussians")


@dataclass(frozen=True)
class Dataset:
    """Train/validation tensors; x is float, y holds class indices (long)."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    n_classes: int

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return tuple(self.x_train.shape[1:])

    def to(self, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> Dataset:
        """Move/cast the inputs and float targets (class-index targets stay long)."""
        cast = lambda t: t.to(device=device, dtype=dtype)
        cast_y = lambda t: cast(t) if t.is_floating_point() else t.to(device)
        return Dataset(self.name, cast(self.x_train), cast_y(self.y_train), cast(self.x_val),
                       cast_y(self.y_val), self.n_classes)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}: {len(self.x_train)} train + {len(self.x_val)} val, "
                f"shape {self.in_shape}, {self.n_classes} classes)")


def _check_fraction(val_fraction: float) -> None:
    if not 0 <= val_fraction < 1:
        raise GradDoctorError(f"val_fraction must be in [0, 1), got {val_fraction}")


def _check_size(n: int, classes: int) -> None:
    if classes < 1 or n < 2 * classes:
        raise GradDoctorError(f"need classes >= 1 and n >= 2 x classes, got n={n}, classes={classes}")


def _split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int, standardise: bool,
           name: str, n_classes: int, image: tuple[int, ...] | None = None) -> Dataset:
    _check_fraction(val_fraction)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_val = round(len(x) * val_fraction)
    val, tr = order[:n_val], order[n_val:]
    x = x.astype(np.float32)
    if standardise:  # statistics from the training part only
        mu, sd = x[tr].mean(0), x[tr].std(0)
        x = (x - mu) / np.where(sd > 1e-8, sd, 1.0)
    if image is not None:
        x = x.reshape(len(x), *image)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    return Dataset(name, t(x[tr]), t(y[tr]).long(), t(x[val]), t(y[val]).long(), n_classes)


def digits(seed: int = 0, image: bool = False, val_fraction: float = 0.2,
           standardise: bool = True) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), standardised."""
    sk = require("sklearn.datasets", "data")
    bunch = sk.load_digits()
    return _split(bunch.data, bunch.target, val_fraction, seed, standardise, "digits", 10,
                  (1, 8, 8) if image else None)


def spirals(n: int = 1500, classes: int = 3, noise: float = 0.2, seed: int = 0,
            val_fraction: float = 0.2) -> Dataset:
    """k interleaved 2-D spirals, n points in all."""
    _check_size(n, classes)
    rng = np.random.default_rng(seed)
    per = math.ceil(n / classes)
    xs, ys = [], []
    for k in range(classes):
        r = np.linspace(0.05, 1.0, per)
        theta = np.linspace(0, 3.5, per) + 2 * math.pi * k / classes + rng.normal(0, noise, per)
        xs.append(np.stack([r * np.sin(theta), r * np.cos(theta)], 1))
        ys.append(np.full(per, k))
    x, y = np.concatenate(xs)[:n], np.concatenate(ys)[:n]
    return _split(x, y, val_fraction, seed, False, "spirals", classes)


def gaussians(n: int = 1500, dim: int = 16, classes: int = 4, separation: float = 3.0,
              seed: int = 0, val_fraction: float = 0.2) -> Dataset:
    """k unit-variance Gaussian blobs in `dim` dimensions; mean coordinates differ by
    `separation` (RMS) between classes, so mean distances are about separation x sqrt(dim)."""
    _check_size(n, classes)
    rng = np.random.default_rng(seed)
    means = rng.normal(0, separation / math.sqrt(2), (classes, dim))
    y = rng.integers(0, classes, n)
    x = means[y] + rng.normal(0, 1, (n, dim))
    return _split(x, y, val_fraction, seed, False, "gaussians", classes)


def load(name: str, seed: int = 0, image: bool = False, **kwargs) -> Dataset:
    """A data set by name: 'digits', 'spirals' or 'gaussians'."""
    if name not in DATASETS:
        raise unknown("data set", name, DATASETS)
    if name == "digits":
        return digits(seed=seed, image=image, **kwargs)
    if image:
        raise GradDoctorError(f"data set {name!r} is not image-shaped; use --kind mlp or --data digits")
    if name == "spirals":
        return spirals(seed=seed, **kwargs)
    return gaussians(seed=seed, **kwargs)


def from_tensors(x: Tensor, y: Tensor, val_fraction: float = 0.2, seed: int = 0,
                 name: str = "tensors") -> Dataset:
    """Wrap the user's own (x, y) tensors (y: class indices) as a Dataset with a seeded split."""
    if len(x) != len(y):
        raise GradDoctorError(f"x has {len(x)} samples but y has {len(y)}")
    if len(x) < 2:
        raise GradDoctorError("need at least 2 samples to make a train/validation split")
    _check_fraction(val_fraction)
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    n_val = min(len(x) - 1, max(1, round(len(x) * val_fraction))) if val_fraction > 0 else 0
    val, tr = order[:n_val], order[n_val:]
    return Dataset(name, x[tr], y[tr], x[val], y[val], _n_classes(y))


def _n_classes(y: Tensor) -> int:
    """Classes for index targets (max + 1); outputs for float targets (last dim, or 1)."""
    if y.is_floating_point():
        return int(y.shape[-1]) if y.dim() > 1 else 1
    return int(y.max().item()) + 1


def from_loader(train: Iterable, val: Iterable | None = None, val_fraction: float = 0.2,
                seed: int = 0, name: str = "loader") -> Dataset:
    """Collect (x, y) batches from the user's DataLoader(s) into a Dataset (held in memory).

    With `val` given, it is the validation set; otherwise `val_fraction` of `train` is split off.
    """
    def collect(loader: Iterable, which: str) -> tuple[Tensor, Tensor]:
        xs, ys = [], []
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise GradDoctorError(f"the {which} loader must yield (x, y) pairs, got {type(batch).__name__}")
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]))
        if not xs:
            raise GradDoctorError(f"the {which} loader yielded no batches")
        return torch.cat(xs), torch.cat(ys)

    x, y = collect(train, "training")
    if val is None:
        return from_tensors(x, y, val_fraction=val_fraction, seed=seed, name=name)
    xv, yv = collect(val, "validation")
    return Dataset(name, x, y, xv, yv, _n_classes(torch.cat([y, yv])))
