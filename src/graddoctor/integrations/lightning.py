"""GradDoctorCallback: graddoctor's probe inside a Lightning Trainer, a thin adapter over watch().

    from graddoctor.integrations.lightning import GradDoctorCallback
    doctor = GradDoctorCallback(every=10)
    lightning.Trainer(callbacks=[doctor]).fit(model, loader)
    print(doctor.diagnosis)

Where each piece happens, and why there:
- on_fit_start: watch(pl_module, ...) with the precision plugin's GradScaler (if any) and,
  under a multi-process strategy, the WORLD process group (the trace is the global batch's).
- on_before_optimizer_step: the gradients are final and unscaled (Lightning's AMP plugin
  calls scaler.unscale_ before this hook): probe.before_update reads gradient/weight norms.
- a step *post*-hook on each torch optimizer: probe.after_update measures the update ratios and
  ends the step. Not a pre-hook: with Lightning's closure, optimizer.step(closure) runs the
  forward and backward inside the step, so a step pre-hook fires before the gradients exist.
- on_train_batch_end: adds the loss (or ends a step whose optimizer step AMP skipped) and logs
  per-layer scalars of recorded steps through trainer.loggers.
- on_fit_end: diagnose; global rank 0 prints it and writes the RunStore.
- teardown / on_exception: the probe is closed, every hook removed.
"""
from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..errors import GradDoctorError, require, unknown
from ..probe.probe import STATS, Probe, watch


def _lightning():
    try:
        import lightning.pytorch as pl  # the `lightning` package
    except ImportError:
        try:
            import pytorch_lightning as pl  # the older stand-alone package
        except ImportError:
            pl = require("lightning.pytorch", "lightning")  # raises with the install hint
    return pl


pl = _lightning()

# Per-layer metrics logged at every recorded step (keys "graddoctor/<metric>/<layer>").
LOG_METRICS = ("grad_norm", "delta_rms", "update_ratio")


def _loss_of(outputs: object) -> Tensor | float | None:
    """The loss in what training_step returned (a tensor, or a dict with 'loss')."""
    if isinstance(outputs, dict):
        outputs = outputs.get("loss")
    return outputs if isinstance(outputs, (Tensor, float, int)) else None


class GradDoctorCallback(pl.Callback):
    """Records gradients during trainer.fit, diagnoses at the end (see the module docstring)."""

    def __init__(self, every: int = 1, stats: str = "full", *, log_metrics: tuple[str, ...] = LOG_METRICS,
                 store: str | Path | None = None, print_report: bool = True) -> None:
        if stats not in STATS:
            raise unknown("stats preset", stats, STATS)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise GradDoctorError(f"every must be a whole number >= 1 (record every k-th step), got {every!r}")
        self.every, self.stats, self.log_metrics = every, stats, tuple(log_metrics)
        self.store, self.print_report = store, print_report
        self.probe: Probe | None = None
        self.diagnosis = None  # graddoctor.Diagnosis after fit (None if the trace was not diagnosable)
        self.run_id: int | None = None  # the RunStore run written at fit end (rank 0, with store=)
        self._handles: list = []
        self._stepped = False  # this batch reached on_before_optimizer_step
        self._ended = 0  # training steps the probe has ended

    @property
    def trace(self):
        """The probe's Trace (None before fit)."""
        return None if self.probe is None else self.probe.trace

    # -- attach -----------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        import torch.distributed as dist

        self._close()
        scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
        group = dist.group.WORLD if trainer.world_size > 1 and dist.is_available() and dist.is_initialized() else None
        self.probe = watch(pl_module, every=self.every, stats=self.stats, scaler=scaler, process_group=group)
        self.probe.trace.meta["framework"] = "lightning"
        self._handles = [opt.register_step_post_hook(self._after_step) for opt in trainer.optimizers]
        self._stepped, self._ended = False, 0

    def _after_step(self, optimizer, args, kwargs) -> None:
        if self.probe is not None and self._stepped:
            self.probe.after_update(optimizer)

    # -- record -----------------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.probe is not None:
            self.probe.before_update(optimizer)
            self._stepped = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.probe is None or not self._stepped:
            return  # accumulating gradients: the step ends with the batch that steps
        self._stepped = False
        self.probe.step(_loss_of(outputs))  # adds the loss, or ends a step AMP skipped
        self._ended += 1
        if self.log_metrics and trainer.loggers:
            self._log(trainer)

    def _log(self, trainer) -> None:
        trace = self.probe.trace
        if not len(trace) or trace.steps[-1] != self._ended - 1:
            return  # not a recorded step (or one AMP skipped)
        last = trace.select(slice(len(trace) - 1, len(trace)))
        metrics = {f"graddoctor/{m}/{name}": float(v) for m in self.log_metrics
                   for name, v in zip(last.layer_names, last[m][0]) if v == v}  # v == v: not nan
        gn = float(last["global_grad_norm"][0])
        if gn == gn:
            metrics["graddoctor/global_grad_norm"] = gn
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    # -- conclude ---------------------------------------------------------------------------
    def on_fit_end(self, trainer, pl_module) -> None:
        if self.probe is None:
            return
        from ..diagnose.api import diagnose

        self._close()
        trace = self.probe.trace
        try:
            self.diagnosis = diagnose(trace)
        except GradDoctorError as exc:
            self.diagnosis, why = None, str(exc)
        if not trainer.is_global_zero:
            return  # one writer: global rank 0
        if self.print_report:
            print("graddoctor:", self.diagnosis if self.diagnosis is not None else f"no diagnosis ({why})")
        if self.store is not None:
            from ..store import RunStore

            spec = {"model": type(pl_module).__name__, "layers": trace.layer_names}
            config = {"every": self.every, "stats": self.stats, "precision": str(trainer.precision),
                      "world_size": trainer.world_size, "max_steps": trainer.max_steps,
                      "max_epochs": trainer.max_epochs}
            with RunStore(self.store) as st:
                self.run_id = st.save_run(spec, config, trace, None, self.diagnosis, kind="lightning")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close(exception)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._close()

    def _close(self, exception: BaseException | None = None) -> None:
        """Remove the optimizer hooks and close the probe (no collective after an exception)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        if self.probe is not None:
            if exception is not None:
                self.probe.__exit__(type(exception), exception, None)
            else:
                self.probe.close()
