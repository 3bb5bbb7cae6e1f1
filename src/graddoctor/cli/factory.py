"""Load a user's setup from `path/to/file.py:factory` (used by `check` and `treat`).

The factory takes no arguments and returns one of:

    model                                        no data: the command makes random data from its flags
    (model, inputs, targets)                     one batch, used at every step
    (model, data[, loss_fn])                     data: an (inputs, targets) pair, a DataLoader (or any
                                                 re-iterable of batches) or a graddoctor Dataset;
                                                 loss_fn(output, targets) (default: cross-entropy for
                                                 class indices, else MSE)
    (model, loader, train_step[, make_optimizer])  train_step(model, batch) -> loss: your forward and
                                                 loss, any batch (dicts too); make_optimizer(params)
                                                 -> your torch.optim.Optimizer
    UserSetup(...) or a dict with the same keys  says it explicitly

A third element is a train_step when its first parameter is named `model` (or net, module,
network) or when a make_optimizer follows; otherwise it is a loss_fn. `load_setup` returns a
UserSetup whichever form was used: `setup.loss(batch)` is one checked training-step loss.
"""
from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import GradDoctorError
from .userstep import checked_backward, checked_loss, default_step, one_line

TRAIN_STEP_FIRST = ("model", "net", "module", "network")  # first parameter names that mark a train_step
DATASET_BATCH = 128  # batch size when the factory returns a graddoctor Dataset


@dataclass
class UserSetup:
    """What a user's factory gives: the model, the batches and how one training step is computed."""

    model: nn.Module
    loader: Iterable | None  # re-iterable batches (None: no data; the command makes random data)
    train_step: Callable[[nn.Module, object], Tensor]  # the user's, or the default (model(x), loss_fn)
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None
    loss_fn: Callable | None = None  # the (output, targets) loss of the older (model, data, loss_fn) form
    data: object = None  # what the factory returned as data, as it was (a Dataset, a pair, a loader)
    user_step: bool = False  # train_step is the user's own
    source: str = "the factory"  # 'file.py:factory', for messages
    _one_shot: bool = field(default=False, repr=False)

    def batches(self) -> Iterator:
        """The loader's batches, over and over (epochs); an error if there are none."""
        if self.loader is None:
            raise GradDoctorError(f"{self.source} returns no data: give --input-shape (e.g. 3x32x32), "
                                  "or return (model, loader, train_step) from the factory")
        n = 0
        while True:
            k = 0
            for batch in self.loader:
                k += 1
                yield batch
            n += k
            if n == 0:
                raise GradDoctorError(f"the data from {self.source} yielded no batches")
            if k == 0 or self._one_shot:
                raise GradDoctorError(f"the data from {self.source} is an iterator that ran out after {n} "
                                      "batches; return a DataLoader or a list (re-iterable), or ask for "
                                      "fewer steps")

    def loss(self, batch: object) -> Tensor:
        """One step's loss on `batch` (the user's train_step or the default), checked: scalar, has a gradient."""
        what = f"train_step from {self.source}" if self.user_step else f"the model from {self.source}"
        return checked_loss(self.train_step, self.model, batch, what)

    def backward(self, loss: Tensor) -> None:
        """loss.backward(), its errors in one line."""
        checked_backward(loss)

    def trainable(self) -> list[nn.Parameter]:
        """The parameters that require a gradient; an error if every one is frozen."""
        params = list(self.model.parameters())
        if not params:
            raise GradDoctorError(f"{type(self.model).__name__} from {self.source} has no parameters to diagnose")
        trainable = [p for p in params if p.requires_grad]
        if not trainable:
            raise GradDoctorError(f"every parameter of {type(self.model).__name__} from {self.source} is frozen "
                                  "(requires_grad=False): nothing to diagnose; unfreeze what you train "
                                  "(e.g. model.requires_grad_(True)) before returning it")
        return trainable

    def optimizer(self, lr: float = 0.01) -> torch.optim.Optimizer:
        """The user's make_optimizer(trainable params), else SGD(lr, momentum=0.9)."""
        params = self.trainable()
        if self.make_optimizer is None:
            if not lr > 0:
                raise GradDoctorError(f"--lr must be positive, got {lr}")
            return torch.optim.SGD(params, lr=lr, momentum=0.9)
        try:
            opt = self.make_optimizer(params)
        except Exception as exc:  # the user's code
            raise GradDoctorError(f"make_optimizer from {self.source} raised {one_line(exc)}") from None
        if isinstance(opt, (tuple, list)) and opt and isinstance(opt[0], torch.optim.Optimizer):
            opt = opt[0]  # (optimizer, scheduler): the scheduler is the user's loop's business
        if not isinstance(opt, torch.optim.Optimizer):
            raise GradDoctorError(f"make_optimizer from {self.source} must return a torch.optim.Optimizer, "
                                  f"got {type(opt).__name__}")
        return opt

    def describe(self) -> str:
        """One line: which model, which data, whose step and optimizer."""
        data = ("no data" if self.loader is None else "one batch" if isinstance(self.loader, list)
                and len(self.loader) == 1 else type(self.data if self.data is not None else self.loader).__name__)
        step = "its train_step" if self.user_step else "loss_fn" if self.loss_fn else "the default loss"
        opt = "its make_optimizer" if self.make_optimizer else "SGD (--lr, momentum 0.9)"
        return f"{type(self.model).__name__} from {self.source}: {data}, {step}, {opt}"


def load_factory(target: str) -> Callable:
    """Import `file.py:name` and return the callable `name` from it."""
    path_s, sep, name = target.rpartition(":")
    if not sep or not path_s or not name:
        raise GradDoctorError(f"expected FILE.py:FACTORY, got {target!r}")
    path = Path(path_s)
    if not path.is_file():
        raise GradDoctorError(f"no such file: {path}")
    spec = importlib.util.spec_from_file_location(f"_graddoctor_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: any error is reported in one line
        raise GradDoctorError(f"importing {path} failed: {one_line(exc)}") from None
    finally:
        sys.path.pop(0)
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items() if inspect.isfunction(v) and not k.startswith("_")
                       and v.__module__ == module.__name__)
        raise GradDoctorError(f"{path} has no factory {name!r}; functions there: {', '.join(found) or 'none'}")
    return fn


def call_factory(fn: Callable, target: str) -> object:
    """Call the factory, reporting its errors in one line."""
    try:
        return fn()
    except Exception as exc:  # the user's code
        raise GradDoctorError(f"{target} raised {one_line(exc)}") from None


def _is_train_step(fn: object) -> bool:
    """train_step(model, batch) rather than loss_fn(output, targets): by its first parameter's name."""
    if isinstance(fn, nn.Module):
        return False  # nn.CrossEntropyLoss() and friends
    try:
        first = next(iter(inspect.signature(fn).parameters), "")
    except (TypeError, ValueError):  # builtins without a signature: F.cross_entropy-like
        return False
    return first.lower() in TRAIN_STEP_FIRST


def _loader(data: object) -> tuple[Iterable, bool]:
    """The data as re-iterable batches, and whether it is a one-shot iterator."""
    if hasattr(data, "x_train") and hasattr(data, "y_train"):  # a graddoctor Dataset
        g = torch.Generator().manual_seed(0)
        ds = torch.utils.data.TensorDataset(data.x_train, data.y_train)
        return torch.utils.data.DataLoader(ds, batch_size=DATASET_BATCH, shuffle=True, generator=g), False
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return [tuple(data)], False  # one (inputs, targets) batch
    try:
        it = iter(data)
    except TypeError:
        raise GradDoctorError(f"data must be an (inputs, targets) pair, a DataLoader or a graddoctor Dataset, "
                              f"got {type(data).__name__}") from None
    return data, it is data


def _fields(result: object, target: str) -> dict:
    """The factory's result as named parts."""
    if isinstance(result, nn.Module):
        return {"model": result}
    if isinstance(result, dict) and isinstance(result.get("model"), nn.Module):
        unknown = set(result) - {"model", "data", "loader", "train_step", "make_optimizer", "loss_fn"}
        if unknown:
            raise GradDoctorError(f"{target} returned a dict with unknown keys {sorted(unknown)}; use model, "
                                  "loader, train_step, make_optimizer (or data, loss_fn)")
        out = dict(result)
        if "loader" in out:
            out["data"] = out.pop("loader")
        return out
    if not (isinstance(result, tuple) and result and isinstance(result[0], nn.Module) and len(result) <= 4):
        raise GradDoctorError(f"{target} must return a model, (model, inputs, targets), (model, data[, loss_fn]) "
                              f"or (model, loader, train_step[, make_optimizer]); got {type(result).__name__}"
                              + (f" of {len(result)}" if isinstance(result, tuple) else ""))
    model, rest = result[0], list(result[1:])
    if len(rest) == 2 and all(isinstance(t, Tensor) for t in rest):
        return {"model": model, "data": tuple(rest)}
    out = {"model": model, "data": rest[0] if rest else None}
    if len(rest) >= 2 and rest[1] is not None:
        if not callable(rest[1]):
            raise GradDoctorError(f"{target}: the third element must be a train_step(model, batch) or a "
                                  f"loss_fn(output, targets), got {type(rest[1]).__name__}")
        out["train_step" if len(rest) == 3 or _is_train_step(rest[1]) else "loss_fn"] = rest[1]
    if len(rest) == 3:
        out["make_optimizer"] = rest[2]
    return out


def setup_from(result: object, target: str = "the factory") -> UserSetup:
    """A factory's result (any of the forms in the module docstring) -> UserSetup."""
    if isinstance(result, UserSetup):
        return result
    f = _fields(result, target)
    for key in ("train_step", "make_optimizer", "loss_fn"):
        if f.get(key) is not None and not callable(f[key]):
            raise GradDoctorError(f"{target}: {key} must be callable, got {type(f[key]).__name__}")
    data = f.get("data")
    loader, one_shot = _loader(data) if data is not None else (None, False)
    step = f.get("train_step")
    return UserSetup(model=f["model"], loader=loader, train_step=step or default_step(f.get("loss_fn")),
                     make_optimizer=f.get("make_optimizer"), loss_fn=f.get("loss_fn"), data=data,
                     user_step=step is not None, source=target, _one_shot=one_shot)


def load_setup(target: str) -> UserSetup:
    """Import `file.py:factory`, call it and return what it gives as a UserSetup (errors in one line)."""
    return setup_from(call_factory(load_factory(target), target), target)


def resolve(result: object, target: str) -> tuple[nn.Module, object | None, Callable | None]:
    """A factory's result -> (model, data or None, loss_fn or None) (the older protocol; see load_setup)."""
    s = setup_from(result, target)
    return s.model, s.data, s.loss_fn


def parse_shape(text: str) -> tuple[int, ...]:
    """'3x32x32' -> (3, 32, 32)."""
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise GradDoctorError(f"--input-shape must look like 3x32x32, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise GradDoctorError(f"--input-shape must be positive sizes, got {text!r}")
    return shape
