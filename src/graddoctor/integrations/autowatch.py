"""AutoWatch: find the models that code graddoctor does not own trains, and watch each one.

Used by `graddoctor run` (the user's script runs unchanged, in this process). What it hooks:
- PyTorch's global optimizer step hooks: every `optimizer.step()` of any torch optimizer ends a
  training step of the models that optimizer trains (probe.before_update / after_update), with
  the loss taken by a LossTap. A `step(closure)` (Lightning, LBFGS) runs forward and backward
  inside the step: the closure is wrapped, and the gradients are read when it returns.
- A global module forward pre-hook, until the first optimizer step: at the first forward (with
  grad enabled) of a module it has not seen, it looks for the optimizers that hold its
  parameters; the models they train are watched from then on, so that the very first step (the
  network at initialisation) is recorded. Optimizers of models that do not run are left alone.
  An optimizer first seen at its step is watched from its next step on (`first_step` says so).
- The parameters an optimizer holds are mapped to the top-level modules that own them (those no
  module holding them as a child owns): one scan of the garbage collector's objects (`gc`), for
  the modules and optimizers alive. It finds any model however it was built (also deep-copied or
  unpickled ones, which construction hooks miss). A scan walks every object alive (its cost,
  with transformers and Lightning imported: benchmarks/run.py), so it happens once per new
  optimizer, and at most MAX_SCANS times on forward passes.
Nothing here raises into the user's training: a failure in graddoctor's own hooks stops watching
(the `notes` say why) and the training goes on.
"""
from __future__ import annotations

import gc
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim import Optimizer

from ..errors import GradDoctorError, unknown
from ..probe.probe import STATS, Probe, watch
from .losstap import LossTap

MAX_SCANS = 8  # heap scans started by forward passes (each a fraction of a second); optimizer steps always scan


@dataclass(eq=False)
class Watched:
    """One model found and watched: its name, the module, the optimizer that trains it, the probe."""

    name: str  # the model's class name, '#2', '#3' for repeats
    model: nn.Module
    optimizer: Optimizer
    probe: Probe
    first_step: int  # steps of this optimizer before recording began (0: from the first)
    steps: int = 0  # optimizer steps ended while watched
    notes: list[str] = field(default_factory=list)
    rank: int = 0  # torch.distributed rank when it was found (0: one process)


def scan_heap() -> tuple[list[nn.Module], list[Optimizer]]:
    """Every nn.Module and torch optimizer alive in this process (one pass over gc's objects)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some lazily deprecated objects warn when touched
        modules, optimizers = [], []
        for o in gc.get_objects():
            t = type(o)
            if issubclass(t, nn.Module):
                modules.append(o)
            elif issubclass(t, Optimizer):
                optimizers.append(o)
    return modules, optimizers


def optimizer_params(optimizer: Optimizer) -> list[torch.Tensor]:
    """The tensors an optimizer updates, in its param_groups' order."""
    return [p for g in optimizer.param_groups for p in g["params"]]


def roots_of(params: list[torch.Tensor], modules: list[nn.Module]) -> list[nn.Module]:
    """The top-level modules that own any of `params`, ordered by the first parameter each owns."""
    order = {id(p): i for i, p in reversed(list(enumerate(params)))}
    first = {}
    for m in modules:
        owned = [order[id(p)] for p in m.parameters() if id(p) in order]
        if owned:
            first[id(m)] = min(owned)
    children = {id(c) for m in modules if id(m) in first for c in m._modules.values() if c is not None}
    roots = [m for m in modules if id(m) in first and id(m) not in children]
    return sorted(roots, key=lambda m: first[id(m)])


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class AutoWatch:
    """Watches every model that a torch optimizer trains while it is open (a context manager)."""

    def __init__(self, every: int = 1, stats: str = "full",
                 on_start: Callable[[Watched], None] | None = None,
                 on_step: Callable[[Watched, torch.Tensor | None], None] | None = None,
                 on_note: Callable[[str], None] | None = None) -> None:
        if stats not in STATS:
            raise unknown("stats preset", stats, STATS)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise GradDoctorError(f"every must be a whole number >= 1 (record every k-th step), got {every!r}")
        self.every, self.stats = every, stats
        self.on_start, self.on_step, self.on_note = on_start, on_step, on_note
        self.watched: list[Watched] = []
        self.notes: list[str] = []
        self.tap = LossTap()
        self._by_opt: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # optimizer -> [Watched]
        self._known: weakref.WeakSet = weakref.WeakSet()  # optimizers already handled
        self._pending: weakref.WeakSet = weakref.WeakSet()  # to attach after their current step
        self._seen: weakref.WeakSet = weakref.WeakSet()  # modules whose forward already triggered a scan
        self._counts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # optimizer -> steps seen
        self._handles: list = []
        self._forward_handle = None
        self._scans = 0
        self.scan_seconds = 0.0  # time spent finding models (heap scans): a one-off cost, not per step
        self._broken = False

    # -- lifetime ---------------------------------------------------------------------------
    def __enter__(self) -> AutoWatch:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self.tap.__enter__()
        self._forward_handle = torch.nn.modules.module.register_module_forward_pre_hook(self._on_forward)
        self._handles = [register_optimizer_step_pre_hook(self._before_step),
                         register_optimizer_step_post_hook(self._after_step)]
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        self._stop_forward()
        for h in self._handles:
            h.remove()
        self._handles = []
        self.tap.__exit__(exc_type, exc, tb)
        for w in self.watched:
            w.probe.__exit__(exc_type, exc, tb)  # after an exception: no collective (DDP) on the way out

    @property
    def trained(self) -> list[Watched]:
        """The watched models that took at least one optimizer step while watched."""
        return [w for w in self.watched if w.steps > 0]

    def note(self, text: str) -> None:
        """Remember (and report) something the user should know about what was watched."""
        self.notes.append(text)
        if self.on_note is not None:
            self.on_note(text)

    # -- discovery --------------------------------------------------------------------------
    def _stop_forward(self) -> None:
        if self._forward_handle is not None:
            self._forward_handle.remove()
            self._forward_handle = None

    def _on_forward(self, module: nn.Module, args: tuple) -> None:
        if not torch.is_grad_enabled() or module in self._seen or self._broken:
            return
        try:
            mine = {id(p) for p in module.parameters() if p.requires_grad}
            if not mine:  # nothing here to train (frozen, or no parameters): no optimizer to look for
                self._seen.add(module)
                return
            if self._scans >= MAX_SCANS:
                self._stop_forward()
                return
            self._scans += 1
            modules, optimizers = self._scan()
            found = [opt for opt in optimizers if any(id(p) in mine for p in optimizer_params(opt))]
            if found:  # else (e.g. a forward that infers shapes before the optimizer exists): ask again
                self._seen.update(module.modules())  # its submodules' calls are part of this call
            for opt in found:  # the optimizers that train this module (not others still alive)
                if opt not in self._known:
                    self._attach(opt, modules)
        except Exception as exc:  # graddoctor's own failure: never the user's training
            self._fail(exc)

    def _scan(self) -> tuple[list[nn.Module], list[Optimizer]]:
        t = time.perf_counter()
        try:
            return scan_heap()
        finally:
            self.scan_seconds += time.perf_counter() - t

    def _attach(self, opt: Optimizer, modules: list[nn.Module] | None = None) -> None:
        """Watch the top-level modules that `opt` trains (from its next forward pass on)."""
        self._known.add(opt)
        self._pending.discard(opt)
        if isinstance(getattr(opt, "optimizer", None), Optimizer):
            return  # a wrapper (accelerate's AcceleratedOptimizer): the optimizer inside it steps
        if modules is None:
            modules, _ = self._scan()
        roots = roots_of(optimizer_params(opt), modules)
        kind = type(opt).__name__
        if not roots:
            self.note(f"{kind} updates tensors that no nn.Module owns: nothing to watch for it")
            return
        taken = {id(w.probe.model) for w in self.watched} | {id(w.model) for w in self.watched}
        for root in roots:
            if id(root) in taken:
                self.note(f"{type(root).__name__} is trained by a second optimizer ({kind}); graddoctor follows "
                          "the first one's steps")
                continue
            probe, notes = self._probe(root)
            if probe is None:
                self.note(notes[0])
                continue
            name = type(probe.model).__name__
            count = sum(1 for w in self.watched if type(w.probe.model).__name__ == name)
            w = Watched(name if count == 0 else f"{name}#{count + 1}", root, opt, probe,
                        self._counts.get(opt, 0), notes=notes, rank=_rank())
            probe.trace.meta.update({"framework": "run", "name": w.name, "optimizer": kind,
                                     "first_step": w.first_step})
            self.watched.append(w)
            self._by_opt.setdefault(opt, []).append(w)

    def _probe(self, root: nn.Module) -> tuple[Probe | None, list[str]]:
        """watch(root); a compiled model is watched with stats='norms'; (None, [why]) if it cannot be."""
        name = type(root).__name__
        try:
            return watch(root, every=self.every, stats=self.stats), []
        except GradDoctorError as exc:
            if "already being watched" in str(exc):
                return None, [f"{name} is already watched by the script's own graddoctor (watch() or a "
                              "callback); left to it"]
            if "compile" in str(exc) and self.stats == "full":
                return (watch(root, every=self.every, stats="norms"),
                        [f"{name} is torch.compile'd: recorded with stats='norms' (no error signals)"])
            return None, [f"cannot watch {name}: {exc}"]

    # -- stepping ---------------------------------------------------------------------------
    def _active(self, opt: Optimizer) -> list[Watched]:
        return [] if self._broken else self._by_opt.get(opt, [])

    def _before_step(self, opt: Optimizer, args: tuple, kwargs: dict) -> tuple | None:
        self._stop_forward()  # training has begun: every model in use has run forward by now
        if self._broken:
            return None
        try:
            closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
            if opt not in self._known and opt not in self._pending:
                if callable(closure):
                    self._attach(opt)  # its forward runs inside the closure: record this step whole
                else:
                    self._pending.add(opt)  # its forward already ran: record from the next step on
            watched = self._active(opt)
            if not watched:
                return None
            if not callable(closure):
                for w in watched:
                    w.probe.before_update(opt)
                return None
            return self._wrap(opt, watched, closure, args, kwargs)
        except Exception as exc:
            self._fail(exc)
            return None

    def _wrap(self, opt: Optimizer, watched: list[Watched], closure: Callable, args: tuple, kwargs: dict) -> tuple:
        """step(closure): read the gradients when the closure has run (first call only, e.g. LBFGS)."""
        called = []

        def wrapped():
            out = closure()
            if not called and not self._broken:
                called.append(True)
                try:
                    for w in watched:
                        w.probe.before_update(opt)
                except Exception as exc:
                    self._fail(exc)
            return out

        if "closure" in kwargs:
            return args, {**kwargs, "closure": wrapped}
        return (args[0], wrapped, *args[2:]), kwargs

    def _after_step(self, opt: Optimizer, args: tuple, kwargs: dict) -> None:
        loss = self.tap.take()  # the loss of this step, whichever optimizer it was
        self._counts[opt] = self._counts.get(opt, 0) + 1
        if self._broken:
            return
        try:
            for w in self._active(opt):
                w.probe.after_update(opt)
                w.probe.step(loss)
                w.steps += 1
                if w.steps == 1 and self.on_start is not None:
                    self.on_start(w)
                if self.on_step is not None:
                    self.on_step(w, loss)
            if opt in self._pending:
                self._attach(opt)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        """Stop watching (every probe closed) and say why; the user's training carries on."""
        self._broken = True
        self._stop_forward()
        for w in self.watched:
            w.probe.__exit__(type(exc), exc, None)
        self.note(f"graddoctor stopped watching after an internal error: {type(exc).__name__}: {exc}")
