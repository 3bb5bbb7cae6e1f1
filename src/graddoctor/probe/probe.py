"""watch(model): record per-layer gradient, error-signal and activation statistics while training.

The Probe is the one object that owns hooks: forward hooks on the modules that own parameters
(only during recorded steps, and only with stats="full"; with "norms" only during the first
step, to learn the layer order), tensor hooks on each recorded call's output and input (the
error signals dL/d(output), dL/d(input), reduced to a norm as they arrive), optimizer step
pre/post hooks (gradient and weight norms before the update, update norms after it), one
top-level forward pre-hook (the every-step non-finite check of the input, checks.py) and
those of its parts (parts.py: loss scale, DDP ranks, time steps, blocks). Closing it removes
every handle and restores every module's train/eval mode.

Each recorded step: the hooks file numbers into a StepRecord (collect.py, record.py), the
parts add theirs, one host copy, the parts transform the fetched step, and pooling.py turns
buffered steps into Trace rows; the sinks it was given (sinks.py) see each new batch of rows.
"""
from __future__ import annotations

import sys
import warnings
import weakref

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import GradDoctorError, unknown
from . import sinks as sink_lib
from . import stats
from .checks import Checks
from .collect import StepRecord
from .context import LOW_PRECISION, current_lr, describe_optimizer, dtypes_meta
from .fsdp import local
from .layout import Layout
from .parts import make_parts
from .pipeline import Pipeline
from .trace import Trace
from .update import WeightSample
from .wrappers import NO_FORWARD, resolve

# Presets, cheapest first. norms: parameter gradient/weight norms, update ratios, loss (no
# module hooks). full: + error signals dL/d(output), dL/d(input), activation statistics, blocks.
STATS = ("norms", "full")

_WATCHED: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # modules under an open probe


def watch(model: nn.Module, *, every: int = 1, stats: str = "full",
          optimizer: torch.optim.Optimizer | None = None, tensorboard: str | None = None,
          scaler: object | None = None, process_group: object | None = None,
          blocks: str | list[str] | None = "auto", sinks: list | tuple = ()) -> Probe:
    """Start recording `model` (a context manager: hooks are removed on exit). See Probe.

    `tensorboard=DIR` also streams the statistics to TensorBoard event files in DIR (a sink).
    `scaler=` the torch.amp.GradScaler in use: error signals are recorded unscaled (amp.py).
    `process_group=` reduce over these ranks (default: the group of a DDP-wrapped model).
    `blocks=` "auto" | None | [module names]: the error signal at each block's output (blocks.py).
    `sinks=` objects with write_new(trace) and close() that see the trace as it grows (sinks.py).
    """
    return Probe(model, every=every, stats=stats, optimizer=optimizer, tensorboard=tensorboard,
                 scaler=scaler, process_group=process_group, blocks=blocks, sinks=sinks)


class Probe:
    """Records one model's training into a Trace: step 0, then every `every`-th step.

    A training step ends at `optimizer.step()` when an optimizer is bound (watch(...,
    optimizer=opt), or train(..., probe=probe)), else at `probe.step(loss)`.
    """

    def __init__(self, model: nn.Module, *, every: int = 1, stats: str = "full",
                 optimizer: torch.optim.Optimizer | None = None, tensorboard: str | None = None,
                 scaler: object | None = None, process_group: object | None = None,
                 blocks: str | list[str] | None = "auto", sinks: list | tuple = ()) -> None:
        if not isinstance(model, nn.Module):
            raise GradDoctorError(f"watch() needs a torch.nn.Module, got {type(model).__name__}")
        if stats not in STATS:
            raise unknown("stats preset", stats, STATS)
        model, group, compiled, sharded = resolve(model, stats, process_group)  # compile, DDP, FSDP2
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise GradDoctorError(f"every must be a whole number >= 1 (record every k-th step), "
                                  f"got {every!r}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise GradDoctorError(f"optimizer must be a torch.optim.Optimizer, "
                                  f"got {type(optimizer).__name__}")
        if next(model.parameters(), None) is None:
            raise GradDoctorError(f"{type(model).__name__} has no parameters: there is no gradient to "
                                  "record; watch the model that owns the weights")
        modules = list(model.modules())
        if any(m in _WATCHED for m in modules):
            raise GradDoctorError(f"model is already being watched ({type(model).__name__}); close the first "
                                  "probe (leave its `with graddoctor.watch(...)` block) before watching again")
        self.model, self.every, self.stats = model, every, stats
        self._sinks = sink_lib.check(list(sinks))
        if tensorboard is not None:  # fails at once, with the install hint, if missing
            self._sinks.append(sink_lib.named("tensorboard", tensorboard))
        self._trace = Trace(meta={"every": every, "stats": stats, "model": type(model).__name__})
        self._meta = self._trace.meta
        self._meta["dtypes"] = dtypes_meta(model, None, scaler)
        self._meta["blocks"] = []  # names of the blocks in forward order, as they are first seen (blocks.py)
        self._layout = Layout(model, local if sharded else None)
        self._parts = make_parts(model, self._layout, self._meta, stats, scaler, group, compiled, blocks, sharded)
        self._forward_parts = [p for p in self._parts if p.wants_forward]
        self._checks = Checks(model, hook_input=not compiled, meta=self._meta)
        self._flow = Pipeline(self._trace, self._layout, self._parts, self._checks, self._sinks)
        self._trace.attach_source(self._pool_now)  # readers of probe.trace always see every step
        self._scaler, self._compiled = scaler, compiled
        self._low_params = any(d in LOW_PRECISION for d in self._meta["dtypes"]["params"])
        self._n_recorded = 0
        self._last_recorded = -1  # index of the latest recorded step (its loss may come in step())
        self._modes = [(m, m.training) for m in modules]
        self._module_hooks: list = []
        self._opt_hooks: list = []
        self._optimizer: torch.optim.Optimizer | None = None
        self._step_frame = None  # torch's step() wrapper frame of the optimizer step in progress
        self._snapshot: WeightSample | None = None  # sampled weight copies, for update ratios (update.py)
        self._update: tuple | None = None  # (layers, trainable weights, indices of their norms before)
        self._step = 0
        self._record: StepRecord | None = None
        self._grads_checked = False  # the every-step gradient check ran for this step
        self._forwards = 0  # recorded layer calls in the first recorded full step (NO_FORWARD warning)
        self._loss_open = False  # the optimizer ended a step; probe.step(loss) may add its loss
        self._closed = False
        _WATCHED.update(modules)
        if optimizer is not None:
            self.bind_optimizer(optimizer)
        self._begin()

    # -- public ---------------------------------------------------------------------------
    @property
    def trace(self) -> Trace:
        """Everything recorded so far."""
        self._pool()
        return self._trace

    def step(self, loss: Tensor | float | None = None) -> None:
        """End a training step (call it after optimizer.step()); `loss` is recorded with it.

        With a bound optimizer, its step already ended the training step and this only adds
        the loss; a step where the optimizer did not run (e.g. a NaN loss) is ended here.
        """
        self._check_open()
        if not self._loss_open:
            self._finish(loss)
            return
        self._loss_open = False
        if loss is not None:
            self._checks.loss(self._step - 1, loss)
            self._flow.add_loss(self._step - 1, loss, self._last_recorded)
        else:
            self._flow.release()  # DDP: a step held for a loss that is not coming

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Measure update ratios around `optimizer.step()`, which then also ends each step."""
        self._check_open()
        for h in self._opt_hooks:
            h.remove()
        self._opt_hooks = [optimizer.register_step_pre_hook(self._pre_step_hook),
                           optimizer.register_step_post_hook(self._post_step_hook)]
        self._note_optimizer(optimizer)

    def before_update(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients are final and `optimizer` is about to step (for loops that own the step, e.g. Lightning)."""
        self._check_open()
        self._before_update(optimizer, (), {})

    def after_update(self, optimizer: torch.optim.Optimizer) -> None:
        """`optimizer` has stepped: measure the update and end the step (pairs with before_update)."""
        self._check_open()
        self._after_update(optimizer, (), {})

    def close(self) -> None:
        """Remove every hook, restore train/eval modes, drop buffers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for h in self._module_hooks + self._opt_hooks:
            h.remove()
        self._module_hooks, self._opt_hooks = [], []
        for m, training in self._modes:
            m.training = training
        if self._record is not None:
            self._record.closed = True
        self._record, self._snapshot, self._update, self._step_frame = None, None, None, None
        _WATCHED.difference_update(m for m, _ in self._modes)
        self._flow.close(self._step)
        self._pool()
        for sink in self._sinks:
            sink.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None and not self._closed:
            self._flow.close(self._step, clean=False)  # no collective while other ranks may be elsewhere
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"at step {self._step}"
        return (f"Probe({type(self.model).__name__}, stats={self.stats!r}, every={self.every}, {state}, "
                f"{self.trace!r})")

    # -- hooks ----------------------------------------------------------------------------
    def _on_forward(self, module: nn.Module, args: tuple, out: object) -> None:
        layer = self._layout.index.get(module)
        x, y = stats.first_tensor(args), stats.first_tensor(out)
        src = stats.activation_of(x)
        if layer is None:
            layer = self._layout.discover(module, src.name if src else None, stats.per_sample(x),
                                          stats.per_sample(y))
        rec = self._record
        if rec is None or self.stats != "full" or not torch.is_grad_enabled():
            return  # evaluation passes under no_grad are not training steps
        rec.forward(layer, x, src, y)
        self._forwards += 1
        for part in self._forward_parts:
            part.forward(layer, x)

    def _pre_step_hook(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        """The optimizer's step pre-hook: once per optimizer step, also when step() runs nested.

        torch wraps the step() of every optimizer class it has instantiated with the hook calls,
        so a subclass whose step() calls super().step() fires the hooks twice per step, once
        per wrapper (the inner one while the outer one runs). The outer wrapper's frame tells
        them apart; a stored frame that is no longer on the stack is a step that raised.
        """
        frame = sys._getframe(1)  # torch's wrapper around optimizer.step
        if self._step_frame is not None and _on_stack(self._step_frame, frame):
            return  # the inner wrapper of the same step
        self._step_frame = frame
        self._before_update(optimizer, args, kwargs)

    def _post_step_hook(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        """The optimizer's step post-hook: the outer wrapper's only (see _pre_step_hook)."""
        if self._step_frame is not None and sys._getframe(1) is not self._step_frame:
            return  # the inner wrapper's: the outer step is still running
        self._step_frame = None
        self._after_update(optimizer, args, kwargs)

    def _before_update(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        self._loss_open = False
        self._note_optimizer(optimizer)
        rec = self._record
        self._grads_checked = True
        if rec is None:
            self._checks.grads(self._step, grads=self._layout.grads())
            return
        self._layout.adopt_orphans(first=self._n_recorded == 0)
        plan = self._layout.plan()
        train = np.array([p.requires_grad for p in plan.weights], dtype=bool)
        weights = plan.weight_tensors()  # this rank's shards under FSDP2
        params = [p for p, t in zip(weights, train) if t]
        with torch.no_grad():
            if self._snapshot is None or not self._snapshot.fits(params):
                self._snapshot = WeightSample(params)
            norms = None  # weight norms: from the sample copies (update.py), exact for frozen weights
            if params:
                self._snapshot.take(params)
                norms = self._snapshot.weight_norms()
            if not train.all():  # frozen weights (rare): exact norms, put in plan order
                exact = torch.stack(torch._foreach_norm([p for p, t in zip(weights, train) if not t]))
                if norms is not None:
                    full = torch.empty(len(train), dtype=norms.dtype, device=norms.device)
                    full[torch.as_tensor(np.flatnonzero(train), device=norms.device)] = norms
                    full[torch.as_tensor(np.flatnonzero(~train), device=norms.device)] = exact.to(norms)
                    exact = full
                norms = exact
        start = rec.params(plan, norms, zeros=self._zeros_wanted())
        self._checks.grads(self._step, norms=rec.grad_vector)
        rec.host["lr"] = current_lr(optimizer)
        self._update = (plan.w_layer[train], params, start + np.flatnonzero(train))

    def _after_update(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        rec = self._record
        if rec is not None and self._update is not None and self._update[1]:
            layer, _, before = self._update
            with torch.no_grad():
                rec.update(layer, self._snapshot.change_norms(), before)
        self._update = None
        self._finish(None)
        self._loss_open = True

    # -- internals ------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise GradDoctorError("this probe is closed; start a new one with graddoctor.watch(model)")

    def _note_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        if optimizer is not self._optimizer:
            self._optimizer = optimizer
            self._meta["optimizer"] = describe_optimizer(optimizer)

    def _zeros_wanted(self) -> bool:
        """Count exactly-zero gradient elements? Only where 16-bit arithmetic can underflow them."""
        return self._low_params or self._checks.autocast in LOW_PRECISION

    def _finish(self, loss: Tensor | float | None) -> None:
        """End the current step: record it if it is a recorded one, then move on."""
        rec, step = self._record, self._step
        self._flow.release()  # DDP: a step still waiting for its loss
        if loss is not None:
            self._checks.loss(step, loss)
        gradient_check = not self._grads_checked and self._scaler is None  # a scaler skips inf steps itself
        if rec is not None and not rec.backward_open:  # a backward that raised records nothing
            self._file(rec, step, loss, gradient_check)
        elif rec is None and gradient_check:
            self._checks.grads(step, grads=self._layout.grads())
        if rec is not None:
            rec.closed = True
        self._step += 1
        if self.every > 1:
            self._snapshot = None  # sampled weight copies: kept only while consecutive steps need them
        self._begin()

    def _file(self, rec: StepRecord, step: int, loss: Tensor | float | None, gradient_check: bool) -> None:
        """A recorded step ends: the parts add theirs, one host copy, the parts transform it."""
        rec.optimizer_skipped = bool(self._opt_hooks) and not rec.params_done  # a bound optimizer did not step
        if not rec.params_done:
            self._layout.adopt_orphans(first=self._n_recorded == 0)
            rec.params(self._layout.plan(), zeros=self._zeros_wanted())
        if gradient_check and rec.grad_vector is not None:
            self._checks.grads(step, norms=rec.grad_vector)
        if loss is not None:
            rec.set_loss(loss)
        if self._optimizer is not None and "lr" not in rec.host:
            rec.host["lr"] = current_lr(self._optimizer)
        if self._checks.forward_seen:
            self._meta["dtypes"]["autocast"] = self._checks.autocast
        first_full = self._n_recorded == 0 and self.stats == "full" and not self._compiled
        if first_full and self._forwards == 0 and any(p.grad is not None for p in self._layout.params):
            warnings.warn(NO_FORWARD, stacklevel=4)
        self._flow.ship(rec, step)
        self._n_recorded += 1
        self._last_recorded = step

    def _begin(self) -> None:
        """A step begins: a record if it is a recorded one; hooks attached only while needed."""
        recorded = self._step % self.every == 0
        self._record = StepRecord() if recorded else None
        self._grads_checked = False
        self._checks.step, self._checks.forward_seen = self._step, False
        full = recorded and self.stats == "full" and not self._compiled
        for part in self._parts:
            part.begin(self._record, full)
        # module hooks: recorded steps (full); the first step (norms), to learn the layer order
        want = recorded and not self._compiled and (self.stats == "full" or self._n_recorded == 0)
        if want and not self._module_hooks:
            self._module_hooks = [m.register_forward_hook(self._on_forward) for m in self._layout.candidates()]
        elif not want and self._module_hooks:
            for h in self._module_hooks:
                h.remove()
            self._module_hooks = []

    def _pool(self) -> None:
        """Flush the buffered steps into the Trace (through the Trace, which guards re-entry)."""
        self._trace._sync()

    def _pool_now(self) -> None:
        """What the Trace calls before every read: pool the buffered steps."""
        self._flow.pool()


def _on_stack(frame: object, start: object) -> bool:
    """Is `frame` `start` or one of its callers?"""
    while start is not None:
        if start is frame:
            return True
        start = start.f_back
    return False
