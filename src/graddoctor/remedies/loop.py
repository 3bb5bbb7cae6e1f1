"""The training loop treat() runs every candidate with: the user's step, optimizer and batches.

`train_steps` takes `n` optimizer steps of a Run: loss = step(model, batch) (the user's own
forward and loss), backward, then what the candidate's StepSettings add around the user's
optimizer: dynamic loss scaling, gradient clipping, a learning-rate scale and a linear warmup
(applied to every parameter group's lr for the duration of `optimizer.step()` only, so a
scheduler the user's make_optimizer returned keeps its own schedule underneath).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import GradDoctorError
from .base import StepSettings


class LossScaler:
    """Dynamic loss scaling with torch.amp.GradScaler's policy, for parameters of any dtype.

    GradScaler itself refuses float16 parameters ("Attempting to unscale FP16 gradients"),
    which is the case that needs scaling most. The policy is GradScaler's (halve and skip the
    step on an overflow, double after GROWTH_INTERVAL clean steps) with a lower start and a
    shorter interval: treat's runs are tens of steps, and GradScaler's 2^16 overflows a float16
    loss gradient (max 65504) at once, costing a skipped step per halving. It has the
    attributes graddoctor.watch(scaler=...) reads, so the probe records unscaled signals.
    """

    INIT, GROWTH_INTERVAL = 2.0 ** 12, 50

    def __init__(self) -> None:
        self._init_scale = self.INIT
        self._scale = torch.full((), self.INIT)  # 0-d float32, as GradScaler keeps it
        self._clean = 0

    def is_enabled(self) -> bool:
        """Always on (the probe asks)."""
        return True

    def scale(self, loss: Tensor) -> Tensor:
        """The loss times the current scale (backward this)."""
        return loss * float(self._scale)

    def unscale(self, params: list[Tensor]) -> bool:
        """Divide the gradients by the scale; False (and the scale halved) if any is inf/NaN."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return True
        s = float(self._scale)
        torch._foreach_mul_(grads, 1.0 / s)
        finite = bool(torch.stack([g.float().abs().max() for g in grads]).isfinite().all())
        if not finite:
            s, self._clean = s / 2, 0
        else:
            self._clean += 1
            if self._clean >= self.GROWTH_INTERVAL:
                s, self._clean = s * 2, 0
        self._scale = torch.full((), s)
        return finite


@dataclass
class Run:
    """One candidate's training state between segments."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None  # the user's lr scheduler, stepped after each optimizer step
    settings: StepSettings
    scaler: LossScaler | None = None
    step: int = 0  # optimizer steps taken so far (warmup counts from here)


def start_run(model: nn.Module, make_optimizer: Callable, settings: StepSettings) -> Run:
    """The optimizer (and scheduler) the user's make_optimizer builds for this model."""
    made = make_optimizer(model.parameters())
    opt, sched = (made if isinstance(made, tuple) and len(made) == 2 else (made, None))
    if not isinstance(opt, torch.optim.Optimizer):
        raise GradDoctorError(f"make_optimizer(params) must return a torch.optim.Optimizer or "
                              f"(optimizer, scheduler), got {type(made).__name__}")
    return Run(model, opt, sched, settings, LossScaler() if settings.loss_scale else None)


def lr_factor(settings: StepSettings, step: int) -> float:
    """The multiplier of every group's lr at this step (0-based): scale x linear warmup."""
    warm = min(1.0, (step + 1) / settings.warmup_steps) if settings.warmup_steps else 1.0
    return settings.lr_scale * warm


def _optimizer_step(run: Run) -> None:
    factor = lr_factor(run.settings, run.step)
    groups = run.optimizer.param_groups
    saved = [g["lr"] for g in groups]
    if factor != 1.0:
        for g in groups:
            g["lr"] = g["lr"] * factor
    try:
        run.optimizer.step()
    finally:
        for g, lr in zip(groups, saved):
            g["lr"] = lr
    if run.scheduler is not None:
        run.scheduler.step()


def train_steps(run: Run, batches: Iterator, step: Callable[[nn.Module, object], Tensor], n: int,
                probe: object | None = None, deadline: float | None = None) -> list[float]:
    """Take n optimizer steps; returns each step's loss (stops after the first non-finite one, and
    before a step that would end past `deadline`, a time.perf_counter() value, at the last step's pace)."""
    model, opt, s = run.model, run.optimizer, run.settings
    params = [p for g in opt.param_groups for p in g["params"]]
    if probe is not None:
        probe.bind_optimizer(opt)
    losses: list[float] = []
    model.train()
    last = time.perf_counter()
    for _ in range(n):
        now = time.perf_counter()
        if deadline is not None and now + (now - last if losses else 0.0) > deadline:
            break
        last = now
        loss = step(model, next(batches))
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise GradDoctorError(f"train_step(model, batch) must return the loss as a one-element tensor, "
                                  f"got {type(loss).__name__}{tuple(getattr(loss, 'shape', ()))}")
        opt.zero_grad(set_to_none=True)
        (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
        value = float(loss.detach())  # the loop's one host sync per step
        ok = math.isfinite(value) and (run.scaler is None or run.scaler.unscale(params))
        if ok:
            if s.clip_norm is not None:
                nn.utils.clip_grad_norm_(params, s.clip_norm)
            _optimizer_step(run)
        run.step += 1
        if probe is not None:
            probe.step(loss)
        losses.append(value)
        if not math.isfinite(value):
            break
    return losses
