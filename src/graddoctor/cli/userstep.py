"""One training step of a user's model: the default forward + loss, and checked calls of the user's code.

A user's train_step returns the loss; without one, the default step is `loss_fn(output, targets)`
on an (inputs, targets) batch, where the output is the model's tensor, or its `.logits`, or the
first tensor it returns (HF ModelOutput, dict, tuple). Every failure of the user's code is turned
into one GradDoctorError line that names the input and the fix.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import GradDoctorError

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: a target the loss skips


def one_line(exc: BaseException) -> str:
    """'TypeName: first line of the message' (a user's error, in one line)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def output_tensor(out: object) -> Tensor | None:
    """The prediction in what a model returns: the tensor, `.logits`, ['logits'], or the first tensor."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, dict):
        logits = out.get("logits")
    if isinstance(logits, Tensor):
        return logits
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    return next((t for t in map(output_tensor, items) if t is not None), None)


def loss_of(result: object) -> Tensor | None:
    """The loss in what a train_step returns: a tensor, `.loss`, ['loss'], or the first element."""
    if isinstance(result, Tensor):
        return result
    loss = getattr(result, "loss", None)
    if loss is None and isinstance(result, dict):
        loss = result.get("loss")
    if loss is None and isinstance(result, (tuple, list)) and result:
        loss = result[0]
    return loss if isinstance(loss, Tensor) else None


def check_targets(logits: Tensor, targets: Tensor) -> None:
    """Class-index targets must lie in [0, classes) for an output whose last dimension is `classes`."""
    if targets.is_floating_point() or targets.is_complex() or logits.dim() < 2 or targets.numel() == 0:
        return
    classes = logits.shape[-1]
    valid = ((targets >= 0) & (targets < classes)) | (targets == IGNORE_INDEX)
    if not bool(valid.all()):
        bad = targets[~valid]
        raise GradDoctorError(
            f"targets must be class indices in [0, {classes}) for an output of {classes} classes (its last "
            f"dimension); got {int(bad.min())}..{int(bad.max())}: give the output layer as many units as "
            "there are classes (or fix --classes / the factory's targets)")


def default_loss(out: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy for class-index targets (classes on the last dimension), else mean squared error."""
    if not targets.is_floating_point() and out.dim() >= 2:
        check_targets(out, targets)
        return F.cross_entropy(out.flatten(0, -2) if out.dim() > 2 else out, targets.flatten())
    return F.mse_loss(out, targets.to(out.dtype).reshape(out.shape))


def _to(x: object, device: torch.device, dtype: torch.dtype | None) -> object:
    if isinstance(x, Tensor):
        x = x.to(device)
        return x.to(dtype) if dtype is not None and x.is_floating_point() else x
    return x


def default_step(loss_fn: Callable | None = None) -> Callable[[nn.Module, object], Tensor]:
    """A train_step(model, batch) -> loss for (inputs, targets) batches, or dict batches with labels."""
    loss_fn = loss_fn or default_loss

    def train_step(model: nn.Module, batch: object) -> Tensor:
        p = next(model.parameters(), None)
        device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), None)
        if isinstance(batch, dict):  # HF style: model(**batch) computes its own loss from 'labels'
            out = model(**{k: _to(v, device, None) for k, v in batch.items()})
            loss = loss_of(out)
            if loss is None:
                raise GradDoctorError("the model returned no loss for a dict batch: include its 'labels', "
                                      "or give a train_step(model, batch) -> loss in the factory")
            return loss
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise GradDoctorError(f"each batch must be (inputs, targets), got {type(batch).__name__}; "
                                  "or give a train_step(model, batch) -> loss in the factory")
        x, y = _to(batch[0], device, dtype), _to(batch[1], device, None)
        try:
            out = model(x)
        except GradDoctorError:
            raise
        except Exception as exc:  # the user's model
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise GradDoctorError(f"the model failed on inputs of shape {shape}: {one_line(exc)}") from None
        pred = output_tensor(out)
        if pred is None:
            raise GradDoctorError(f"the model returned {type(out).__name__} with no tensor in it; give a "
                                  "train_step(model, batch) -> loss in the factory")
        if not isinstance(y, Tensor):
            raise GradDoctorError(f"targets must be a tensor, got {type(y).__name__}")
        return loss_fn(pred, y)

    return train_step


def checked_loss(train_step: Callable, model: nn.Module, batch: object, what: str) -> Tensor:
    """Call train_step(model, batch) and check that it gave a scalar loss that depends on the parameters."""
    try:
        result = train_step(model, batch)
    except GradDoctorError:
        raise
    except Exception as exc:  # the user's code: any error is reported in one line
        raise GradDoctorError(f"{what} raised {one_line(exc)}") from None
    loss = loss_of(result)
    if loss is None:
        raise GradDoctorError(f"{what} must return the loss (a scalar tensor, or an object with .loss), "
                              f"got {type(result).__name__}")
    if loss.numel() != 1:
        raise GradDoctorError(f"{what} must return a scalar loss, got a tensor of shape {tuple(loss.shape)}; "
                              "reduce it (e.g. .mean())")
    if not loss.requires_grad:
        raise GradDoctorError(f"the loss from {what} does not depend on any trainable parameter: is it "
                              "computed under torch.no_grad(), or detached?")
    return loss.reshape(())


def checked_backward(loss: Tensor) -> None:
    """loss.backward(), with an error of the user's graph reported in one line."""
    try:
        loss.backward()
    except Exception as exc:  # e.g. a custom autograd Function or a hook in the user's model
        raise GradDoctorError(f"the backward pass failed: {one_line(exc)}") from None
