"""watch(model): record per-layer gradient, error-signal and activation statistics while training.

The Probe is the one object that owns hooks: forward hooks on the modules that own parameters
(only during recorded steps, and only with stats="full"; with "norms" only during the first
step, to learn the layer order), tensor hooks on each recorded call's output and input (the
error signals dL/d(output), dL/d(input), reduced to a norm as they arrive), and optimizer
step pre/post hooks (gradient and weight norms before the update, update norms after it).
Closing it removes every handle and restores every module's train/eval mode.
"""
from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import GradDoctorError, unknown
from . import stats
from .collect import StepRecord
from .extras import Extras
from .layout import Layout
from .pooling import RawStep, pool_steps
from .structure import GraphRecorder, find_blocks
from .trace import Trace
from .update import WeightSample
from .wrappers import resolve

# Presets, cheapest first. norms: parameter gradient/weight norms, update ratios, loss (no
# module hooks). full: + error signals dL/d(output), dL/d(input), activation statistics.
STATS = ("norms", "full")
POOL_EVERY = 64  # recorded steps buffered (~10 kB each) before they are pooled into the Trace

_WATCHED: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # modules under an open probe


def watch(model: nn.Module, *, every: int = 1, stats: str = "full",
          optimizer: torch.optim.Optimizer | None = None, tensorboard: str | None = None,
          scaler: object | None = None, process_group: object | None = None) -> Probe:
    """Start recording `model` (a context manager: hooks are removed on exit). See Probe.

    `tensorboard=DIR` also streams the statistics to TensorBoard event files in DIR.
    `scaler=` the torch.amp.GradScaler in use: error signals are recorded unscaled (extras.py).
    `process_group=` reduce over these ranks (default: the group of a DDP-wrapped model).
    """
    return Probe(model, every=every, stats=stats, optimizer=optimizer, tensorboard=tensorboard,
                 scaler=scaler, process_group=process_group)


def _first_tensor(obj: object) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        return next((t for t in map(_first_tensor, obj) if t is not None), None)
    if isinstance(obj, dict):
        return _first_tensor(list(obj.values()))
    return None


class Probe:
    """Records one model's training into a Trace: step 0, then every `every`-th step.

    A training step ends at `optimizer.step()` when an optimizer is bound (watch(...,
    optimizer=opt), or train(..., probe=probe)), else at `probe.step(loss)`.
    """

    def __init__(self, model: nn.Module, *, every: int = 1, stats: str = "full",
                 optimizer: torch.optim.Optimizer | None = None, tensorboard: str | None = None,
                 scaler: object | None = None, process_group: object | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise GradDoctorError(f"watch() needs a torch.nn.Module, got {type(model).__name__}")
        if stats not in STATS:
            raise unknown("stats preset", stats, STATS)
        model, group, compiled = resolve(model, stats, process_group)  # torch.compile, DDP wrappers
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
        self._trace = Trace(meta={"every": every, "stats": stats, "model": type(model).__name__})
        self._trace.attach_source(self._pool_now)  # readers of probe.trace always see every step
        self._tb = None
        if tensorboard is not None:
            from ..report.tensorboard import TraceWriter

            self._tb = TraceWriter(tensorboard)  # fails at once, with the install hint, if missing
        self._pending: list[tuple[int, RawStep]] = []  # recorded, not yet pooled into the Trace
        self._n_recorded = 0
        self._last_recorded = -1  # index of the latest recorded step (its loss may come in step())
        self._layout = Layout(model)
        self._graph = (GraphRecorder(model, self._layout.names, self._layout.candidates(), find_blocks(model))
                       if stats == "full" and not compiled else None)  # the structure, on the first step
        self._extras = Extras(self._layout, self._trace, stats, scaler, group, compiled)
        self._modes = [(m, m.training) for m in modules]
        self._module_hooks: list = []
        self._opt_hooks: list = []
        self._snapshot: WeightSample | None = None  # sampled weight copies, for update ratios (update.py)
        self._update: tuple | None = None  # (layers, trainable weights, indices of their norms before)
        self._step = 0
        self._record: StepRecord | None = StepRecord()
        self._loss_open = False  # the optimizer ended a step; probe.step(loss) may add its loss
        self._closed = False
        _WATCHED.update(modules)
        if optimizer is not None:
            self.bind_optimizer(optimizer)
        self._sync_hooks()

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
        if self._extras.holding(self._step - 1):  # DDP: that step's reduction waited for its loss
            self._pending.extend(self._extras.release(loss))
            return
        if loss is None:
            return
        value, last = loss.detach() if isinstance(loss, Tensor) else float(loss), self._step - 1
        if self._pending and self._pending[-1][0] == last:  # that step was recorded: add its loss
            self._pending[-1] = (last, self._pending[-1][1]._replace(loss=value))  # read when pooled
        elif last == self._last_recorded and len(self._trace) and self._trace.steps[-1] == last:  # else: no flush
            self._trace.set_step_metric("loss", float(value))
            self._trace.set_step_metric("nonfinite_loss", float(not np.isfinite(float(value))))

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Measure update ratios around `optimizer.step()`, which then also ends each step."""
        self._check_open()
        for h in self._opt_hooks:
            h.remove()
        self._opt_hooks = [optimizer.register_step_pre_hook(self._before_update),
                           optimizer.register_step_post_hook(self._after_update)]
        self._trace.meta["optimizer"] = type(optimizer).__name__

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
        self._record, self._snapshot, self._update = None, None, None
        if self._graph is not None:
            self._graph.remove()
        _WATCHED.difference_update(m for m, _ in self._modes)
        self._pending.extend(self._extras.close())
        self._pool()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self._extras.close(clean=False)  # no collective while other ranks may be elsewhere
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"at step {self._step}"
        return (f"Probe({type(self.model).__name__}, stats={self.stats!r}, every={self.every}, {state}, "
                f"{self.trace!r})")

    # -- hooks ----------------------------------------------------------------------------
    def _on_forward(self, module: nn.Module, args: tuple, out: object) -> None:
        layer = self._layout.index.get(module)
        x, y = _first_tensor(args), _first_tensor(out)
        src = stats.activation_of(x)
        if layer is None:
            layer = self._layout.discover(module, src.name if src else None, stats.per_sample(x),
                                          stats.per_sample(y))
        rec = self._record
        if rec is None or self.stats != "full" or not torch.is_grad_enabled():
            return  # evaluation passes under no_grad are not training steps
        rec.forward(layer, x, src, y)
        self._extras.forward(layer, x)

    def _before_update(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        self._loss_open = False
        rec = self._record
        if rec is None:
            return
        self._layout.adopt_orphans(first=self._n_recorded == 0)
        plan = self._layout.plan()
        train = np.array([p.requires_grad for p in plan.weights], dtype=bool)
        params = [p for p, t in zip(plan.weights, train) if t]
        with torch.no_grad():
            if self._snapshot is None or not self._snapshot.fits(params):
                self._snapshot = WeightSample(params)
            if params:
                self._snapshot.take(params)
            norms = torch._foreach_norm(plan.weights) if plan.weights else []
        start = rec.params(plan, norms)
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

    def _finish(self, loss: Tensor | float | None) -> None:
        """End the current step: record it if it is a recorded one, then move on."""
        rec = self._record
        self._pending.extend(self._extras.release())  # DDP: a step still waiting for its loss
        if rec is not None and not rec.backward_open:  # a backward that raised records nothing
            skipped = bool(self._opt_hooks) and not rec.params_done  # a bound optimizer did not step
            if not rec.params_done:
                self._layout.adopt_orphans(first=self._n_recorded == 0)
                rec.params(self._layout.plan())
            if loss is not None:
                rec.set_loss(loss)
            token = self._extras.file(rec, skipped)
            self._pending.extend(self._extras.finish(self._step, rec.finish(), token))
            self._n_recorded += 1
            self._last_recorded = self._step
            structure = self._graph.result() if self._graph is not None else None
            if structure is not None:  # learnt once, from the first step with a training forward
                self._trace.meta["structure"] = structure
                self._graph.remove()
                self._graph = None
            if len(self._pending) >= POOL_EVERY:
                self._pool()
        if rec is not None:
            rec.closed = True
        self._step += 1
        self._record = StepRecord() if self._step % self.every == 0 else None
        if self.every > 1:
            self._snapshot = None  # sampled weight copies: kept only while consecutive steps need them
        self._sync_hooks()

    def _pool(self) -> None:
        """Flush the buffered steps into the Trace (through the Trace, which guards re-entry)."""
        self._trace._sync()

    def _pool_now(self) -> None:
        """Turn the buffered steps into Trace rows (numpy, many steps at once)."""
        if not self._pending:
            return
        layers = self._layout.layers
        self._trace.add_layers([layer.info() for layer in layers[len(self._trace.layers):]])
        values, step_values = pool_steps([raw for _, raw in self._pending], len(layers))
        for (step, _), lv, sv in zip(self._pending, values, step_values):
            self._trace.append(step, lv, sv)
        self._pending = []
        if self._tb is not None:
            self._tb.write_new(self._trace)

    def _sync_hooks(self) -> None:
        """Module hooks exist only while needed: recorded steps (full), the first step (norms)."""
        want = self._record is not None and (self.stats == "full" or self._n_recorded == 0)
        want = want and self._extras.module_hooks
        self._extras.sync(self._record is not None and self.stats == "full")
        if want and not self._module_hooks:
            self._module_hooks = [m.register_forward_hook(self._on_forward)
                                  for m in self._layout.candidates()]
        elif not want and self._module_hooks:
            for h in self._module_hooks:
                h.remove()
            self._module_hooks = []
