"""How treat() trains every candidate: one Recipe (step, optimizer, batches) from its arguments.

Two kinds of data, one loop (loop.py):
- the user's own: `data` is a DataLoader, a list of batches or a function returning a fresh
  iterable, streamed batch by batch (never copied into memory); `train_step(model, batch)`
  is the user's forward + loss (dict batches, any loss), `make_optimizer(params)` theirs;
- in memory (a graddoctor Dataset or an (inputs, targets) pair, the NetSpec case): batches
  drawn from the tensors, `loss_fn(model(x), y)`, graddoctor's TrainConfig optimizer, and
  the training-set loss and validation accuracy measured after each segment.
Every candidate sees the same batches in the same order: the data has its own random
stream (a DataLoader's shuffling is seeded from it), apart from the model's (dropout).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import training
from ..data import Dataset, from_loader, from_tensors
from ..errors import GradDoctorError
from ..nets import NetSpec
from ..training import TrainConfig
from .base import Patient, Sample

SAMPLE_ROWS = 8  # rows of an in-memory data set that remedies trace shapes with


class Stream:
    """Endless batches from re-iterable data, in an order that depends only on `seed`."""

    def __init__(self, source: Callable[[], object], seed: int) -> None:
        self._source, self._it = source, None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._state = torch.get_rng_state()

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> object:
        with torch.random.fork_rng(devices=[]):  # the data's random stream, not the model's
            torch.set_rng_state(self._state)
            for _ in range(2):  # at the end of the data: start it again (a new epoch)
                if self._it is None:
                    self._it = iter(self._source())
                try:
                    batch = next(self._it)
                    break
                except StopIteration:
                    self._it = None
            else:
                raise GradDoctorError("the training data yielded no batches")
            self._state = torch.get_rng_state()
        return batch


def _dataset_batches(data: Dataset, config: TrainConfig) -> Callable[[], Iterator]:
    """One shuffled epoch of an in-memory data set per call (shuffled by the data's stream)."""
    def epoch() -> Iterator:
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
        return training.batches(data.x_train, data.y_train, config.batch_size, gen)
    return epoch


def supervised_step(loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[nn.Module, object], Tensor]:
    """train_step for (inputs, targets) batches: loss_fn(model(inputs), targets), on the model's device."""
    def step(model: nn.Module, batch: object) -> Tensor:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise GradDoctorError(f"batches are {type(batch).__name__}, not (inputs, targets): pass "
                                  f"train_step=f where f(model, batch) returns the loss")
        p = next(model.parameters())
        x, y = batch
        return loss_fn(model(x.to(device=p.device, dtype=p.dtype if x.is_floating_point() else x.dtype)),
                       y.to(p.device))
    return step


def loss_only(train_step: Callable[[nn.Module, object], object]) -> Callable[[nn.Module, object], Tensor]:
    """The user's step, returning the loss tensor also when it returns a model output with .loss (HF)."""
    def step(model: nn.Module, batch: object) -> Tensor:
        out = train_step(model, batch)
        if isinstance(out, Tensor):
            return out
        loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
        if not isinstance(loss, Tensor):
            raise GradDoctorError(f"train_step(model, batch) must return the loss (a tensor, or an output "
                                  f"with .loss), got {type(out).__name__}")
        return loss
    return step


def _loss(loss_fn: object) -> Callable[[Tensor, Tensor], Tensor]:
    if loss_fn is None:
        return F.cross_entropy
    if isinstance(loss_fn, str):
        return training.loss_fn(TrainConfig(loss=loss_fn).loss)
    if not callable(loss_fn):
        raise GradDoctorError(f"loss_fn must be a loss function, a loss module or 'cross_entropy'/'mse', "
                              f"got {loss_fn!r}")
    return loss_fn


def _source(data: object) -> Callable[[], object]:
    """A function returning a fresh iterable over the user's batches (streamed, not copied)."""
    if callable(data) and not isinstance(data, nn.Module):
        return data
    try:
        it = iter(data)
    except TypeError:
        raise GradDoctorError(f"data must be a DataLoader, a list of batches, a function returning an "
                              f"iterable, a graddoctor Dataset or (inputs, targets); got {type(data).__name__}") \
            from None
    if it is data:
        raise GradDoctorError(f"data is a one-shot iterator ({type(data).__name__}): every candidate needs "
                              f"the same batches again; pass the DataLoader itself, a list, or a function "
                              f"that returns a fresh iterator")
    return lambda: data


@dataclass(frozen=True)
class Recipe:
    """The step, optimizer factory and batches every candidate trains with."""

    step: Callable[[nn.Module, object], Tensor]  # (model, batch) -> loss
    source: Callable[[], object]  # a fresh iterable of batches per call
    make_optimizer: Callable | None = None  # params -> Optimizer [, scheduler]; None: the TrainConfig's
    dataset: Dataset | None = None  # in memory: evaluated after each segment (loss, accuracy)
    loss_fn: Callable | None = None  # for that evaluation
    prior_loss: float = math.inf  # loss of a constant class-frequency prediction (learning nothing)

    def batches(self, seed: int) -> Stream:
        """The batches of one training segment: same seed, same batches."""
        return Stream(self.source, seed)

    def sample(self) -> Sample:
        """One batch for the remedies to trace shapes and activations with."""
        if self.dataset is not None:
            batch = (self.dataset.x_train[:SAMPLE_ROWS], self.dataset.y_train[:SAMPLE_ROWS])
        else:
            batch = next(self.batches(0))
        return Sample(batch, self.step, self.dataset)

    def optimizer_factory(self, patient: Patient) -> Callable:
        """The user's make_optimizer, or one for the patient's TrainConfig (graddoctor's optimizers)."""
        if self.make_optimizer is not None:
            return self.make_optimizer
        cfg = patient.config
        return lambda params: training.make_optimizer(_Params(params), cfg)

    def evaluate(self, model: nn.Module) -> tuple[float, float] | None:
        """(training-set loss, validation accuracy) for in-memory data; None for streamed data."""
        if self.dataset is None:
            return None
        p = next(model.parameters())
        d = self.dataset.to(dtype=p.dtype, device=p.device)
        loss, _ = training.evaluate(model, d.x_train, d.y_train, self.loss_fn)
        _, acc = training.evaluate(model, d.x_val, d.y_val, self.loss_fn)
        return loss, acc

class _Params(nn.Module):
    """Adapter: training.make_optimizer takes a model; treat's factories take parameters."""

    def __init__(self, params) -> None:
        super().__init__()
        self._list = list(params)

    def parameters(self, recurse: bool = True):
        return iter(self._list)


# Losses whose "learning nothing" value prior_loss() knows, by the callables that mean them.
_NAMES: dict[object, str] = {F.cross_entropy: "cross_entropy", nn.CrossEntropyLoss: "cross_entropy",
                             F.mse_loss: "mse", nn.MSELoss: "mse"}


def prior_loss(data: Dataset, loss: str | None) -> float:
    """Training loss of a constant prediction of the class frequencies: what learning nothing gets."""
    y = data.y_train
    if loss not in ("cross_entropy", "mse"):
        return math.inf
    if y.is_floating_point():  # regression targets: the best constant is their mean
        return float(((y - y.mean(0)) ** 2).mean()) if loss == "mse" else math.inf
    p = torch.bincount(y.flatten(), minlength=data.n_classes).double() / y.numel()
    if loss == "mse":  # one-hot targets against p: mean over classes of p (1 - p)
        return float((p * (1 - p)).mean())
    return float(-(p[p > 0] * p[p > 0].log()).sum())  # cross-entropy: the entropy of the labels


def recipe_from(subject: NetSpec | nn.Module, data: object, loss_fn: object, train_step: Callable | None,
                make_optimizer: Callable | None, config: TrainConfig, seed: int) -> Recipe:
    """The Recipe for treat()'s arguments (see the module docstring)."""
    if train_step is not None and not callable(train_step):
        raise GradDoctorError(f"train_step must be a function (model, batch) -> loss, got {type(train_step).__name__}")
    if make_optimizer is not None and not callable(make_optimizer):
        raise GradDoctorError(f"make_optimizer must be a function params -> Optimizer, "
                              f"got {type(make_optimizer).__name__}")
    if data is None:
        raise GradDoctorError("treat needs training data: a DataLoader (or list of batches), a graddoctor "
                              "Dataset, or (inputs, targets)")
    in_memory = isinstance(data, Dataset) or (
        isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data))
    if isinstance(subject, NetSpec) and not in_memory:  # graddoctor's own networks: data in memory
        data, in_memory = from_loader(_source(data)(), seed=seed), True
    if in_memory and train_step is None:
        ds = data if isinstance(data, Dataset) else from_tensors(data[0], data[1], seed=seed)
        loss_fn = loss_fn if loss_fn is not None else config.loss
        name = loss_fn if isinstance(loss_fn, str) else _NAMES.get(loss_fn) or _NAMES.get(type(loss_fn))
        crit = _loss(loss_fn)
        return Recipe(supervised_step(crit), _dataset_batches(ds, config), make_optimizer, ds, crit,
                      prior_loss(ds, name))
    if in_memory:  # the user's step over an in-memory pair: (inputs, targets) mini-batches
        ds = data if isinstance(data, Dataset) else from_tensors(data[0], data[1], seed=seed)
        return Recipe(loss_only(train_step), _dataset_batches(ds, config), make_optimizer)
    step = loss_only(train_step) if train_step is not None else supervised_step(_loss(loss_fn))
    return Recipe(step, _source(data), make_optimizer)
