"""Load a user's model factory from `path/to/file.py:factory` (used by `check` and `treat`)."""
from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

from ..errors import GradDoctorError


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
        raise GradDoctorError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.pop(0)
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise GradDoctorError(f"{path} has no factory {name!r}; callables there: {', '.join(found) or 'none'}")
    return fn


def call_factory(fn: Callable, target: str) -> object:
    """Call the factory, reporting its errors in one line."""
    try:
        return fn()
    except Exception as exc:  # the user's code
        raise GradDoctorError(f"{target} raised {type(exc).__name__}: {exc}") from None


def resolve(result: object, target: str) -> tuple[nn.Module, object | None, Callable | None]:
    """A factory's result -> (model, data or None, loss_fn or None).

    Accepts a model, or a tuple (model, data[, loss_fn]) where data is a (inputs, targets)
    batch, a DataLoader, or a graddoctor Dataset.
    """
    if isinstance(result, nn.Module):
        return result, None, None
    if isinstance(result, tuple) and result and isinstance(result[0], nn.Module) and len(result) <= 3:
        model, rest = result[0], list(result[1:]) + [None] * (3 - len(result))
        return model, rest[0], rest[1]
    raise GradDoctorError(f"{target} must return an nn.Module or (model, data, loss_fn), "
                          f"got {type(result).__name__}")


def first_batch(data: object, target: str) -> tuple[Tensor, Tensor]:
    """(inputs, targets) from a batch tuple, a DataLoader/iterable of batches, or a Dataset."""
    if hasattr(data, "x_train") and hasattr(data, "y_train"):
        return data.x_train[:128], data.y_train[:128]
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return data[0], data[1]
    try:
        batch = next(iter(data))
    except (TypeError, StopIteration):
        raise GradDoctorError(f"{target}: data must be an (inputs, targets) pair, a DataLoader or a "
                              f"graddoctor Dataset, got {type(data).__name__}") from None
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        raise GradDoctorError(f"{target}: each batch must be (inputs, targets)")
    return batch[0], batch[1]


def parse_shape(text: str) -> tuple[int, ...]:
    """'3x32x32' -> (3, 32, 32)."""
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise GradDoctorError(f"--input-shape must look like 3x32x32, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise GradDoctorError(f"--input-shape must be positive sizes, got {text!r}")
    return shape
