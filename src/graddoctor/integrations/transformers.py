"""GradDoctorCallback: graddoctor's probe inside a Hugging Face Trainer, a thin adapter over watch().

    from graddoctor.integrations.transformers import GradDoctorCallback
    doctor = GradDoctorCallback(every=10)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[doctor]).train()
    doctor.diagnosis            # also printed at the end; the run and its report in output_dir/graddoctor/

Where each piece happens, and why there (as transformers' own TensorBoard / W&B callbacks do:
read `state`, never touch the loop, write only on the world's process zero):
- on_train_begin: watch(model) bound to the torch optimizer inside accelerate's
  AcceleratedOptimizer: its step hooks run only when the optimizer really steps — once per
  `gradient_accumulation_steps` micro-batches, after fp16 gradients were unscaled (accelerate's
  GradScaler unscales before the inner step), never for a step the scaler skipped. The scaler
  is passed to watch(scaler=) so the error signals are unscaled too. Under several processes the
  probe reduces over the WORLD group: every rank records, the trace is the global batch's.
  The loss of each step is taken from its backward calls (LossTap: the micro-batch losses as
  the Trainer backpropagates them, summed, unscaled). This callback moves itself before the
  reporting callbacks (TensorBoard, W&B, ...) so that they see the scalars it adds.
- on_step_end: ends the step (with its loss); a step the scaler skipped is left out of the trace.
  At a recorded step, a few scalars are kept for the next log (`graddoctor/...`: the spread of
  the error signal over the layers in decades, min/max gradient RMS, median update ratio; per
  layer too with `log_layers=True`). With `max_grad_norm > 0` the probe's gradient norms are
  those after clipping (what the optimizer applies); the error signals are measured during the
  backward, before it; the Trainer's own `grad_norm` log is the norm before clipping.
- on_log: adds them to the Trainer's logs (and to `state.log_history`).
- on_train_end: diagnose; process zero prints it, finishes the stored run, writes the report.
If `train()` raises, there is no callback event: call `doctor.close()` to remove the hooks.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import GradDoctorError, require, unknown
from ..probe.probe import STATS, Probe, watch
from .losstap import LossTap

transformers = require("transformers", "transformers")

LAYER_LOGS = ("grad_norm", "delta_rms", "update_ratio")  # per-layer scalars with log_layers=True


def inner_optimizer(optimizer: object) -> torch.optim.Optimizer | None:
    """The torch optimizer that really steps (inside accelerate's AcceleratedOptimizer), or None."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None


def step_scalars(trace, log_layers: bool = False) -> dict[str, float]:
    """The scalars logged for the trace's last step (pure: numbers in, numbers out).

    Not the global gradient norm: the Trainer logs its own (`grad_norm`, before clipping), and
    the probe reads the gradients the optimizer applies (after clipping).
    """
    last = trace.select(slice(len(trace) - 1, len(trace)))
    out: dict[str, float] = {}
    delta, grad, upd = last["delta_rms"][0], last["grad_rms"][0], last["update_ratio"][0]
    d = delta[np.isfinite(delta) & (delta > 0)]
    g = grad[np.isfinite(grad) & (grad > 0)]
    u = upd[np.isfinite(upd)]
    values = {"signal_spread_decades": float(np.log10(d.max() / d.min())) if len(d) > 1 else np.nan,
              "grad_rms_min": float(g.min()) if len(g) else np.nan,
              "grad_rms_max": float(g.max()) if len(g) else np.nan,
              "update_ratio_median": float(np.median(u)) if len(u) else np.nan}
    out.update({f"graddoctor/{k}": v for k, v in values.items() if np.isfinite(v)})
    if log_layers:
        out.update({f"graddoctor/{m}/{name}": float(v) for m in LAYER_LOGS
                    for name, v in zip(last.layer_names, last[m][0]) if np.isfinite(v)})
    return out


class GradDoctorCallback(transformers.TrainerCallback):
    """Records gradients during Trainer.train(), diagnoses at the end (see the module docstring)."""

    def __init__(self, every: int = 1, stats: str = "full", *, store: str | Path | bool | None = None,
                 report: str | Path | bool | None = None, print_report: bool = True,
                 log_layers: bool = False) -> None:
        """`store`: run store path (default output_dir/graddoctor/runs.db; False: none); `report`: HTML path
        (default beside the store; False: none)."""
        if stats not in STATS:
            raise unknown("stats preset", stats, STATS)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise GradDoctorError(f"every must be a whole number >= 1 (record every k-th step), got {every!r}")
        self.every, self.stats, self.store, self.report = every, stats, store, report
        self.print_report, self.log_layers = print_report, log_layers
        self.probe: Probe | None = None
        self.diagnosis = None  # graddoctor.Diagnosis after train (None if the trace was not diagnosable)
        self.run_id: int | None = None  # the stored run (process zero, unless store=False)
        self.report_path: Path | None = None
        self._tap: LossTap | None = None
        self._live = None  # LiveRun on process zero
        self._ended = 0  # optimizer steps ended
        self._logs: dict[str, float] = {}  # scalars waiting for the next on_log

    @property
    def trace(self):
        """The probe's Trace (None before train)."""
        return None if self.probe is None else self.probe.trace

    # -- attach -----------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        import torch.distributed as dist

        self.close()
        if model is None:
            raise GradDoctorError("GradDoctorCallback got no model at train begin; pass it to the Trainer")
        scaler = getattr(optimizer, "scaler", None)
        scaler = scaler if scaler is not None and scaler.is_enabled() else None
        group = dist.group.WORLD if args.world_size > 1 and dist.is_available() and dist.is_initialized() else None
        opt = inner_optimizer(optimizer)
        self.probe = watch(model, every=self.every, stats=self.stats, optimizer=opt, scaler=scaler,
                           process_group=group)
        self.probe.trace.meta["framework"] = "transformers"
        self._tap = LossTap(scaler).__enter__()
        self._ended, self._logs, self.diagnosis, self.run_id, self.report_path = 0, {}, None, None, None
        self._hoist(sys._getframe(1))
        if state.is_world_process_zero and self.store is not False:
            self._start_run(args, model, opt)

    def _start_run(self, args, model, opt) -> None:
        from ..nets import count_parameters
        from ..store import RunStore
        from .recording import LiveRun

        path = Path(self.store) if self.store not in (None, True) else Path(args.output_dir) / "graddoctor" / "runs.db"
        spec = {"model": type(model).__name__, "parameters": count_parameters(model),
                "optimizer": type(opt).__name__ if opt is not None else None}
        config = {"every": self.every, "stats": self.stats, "learning_rate": args.learning_rate,
                  "gradient_accumulation_steps": args.gradient_accumulation_steps, "max_steps": args.max_steps,
                  "fp16": args.fp16, "bf16": args.bf16, "world_size": args.world_size}
        self._live = LiveRun(RunStore(path), spec, config, self.probe.trace, kind="transformers")

    def _hoist(self, frame) -> None:
        """Move this callback before the reporting callbacks, so that they log the scalars it adds.

        The Trainer calls user callbacks after its reporters (TensorBoard, W&B, ...). The caller's
        frame is the CallbackHandler's call_event; reordering its list mid-loop is safe here: the
        elements after this one keep their positions.
        """
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        callbacks = getattr(frame.f_locals.get("self"), "callbacks", None) if frame is not None else None
        if not isinstance(callbacks, list) or not any(cb is self for cb in callbacks):
            return
        reporters = tuple(INTEGRATION_TO_CALLBACK.values())
        first = next((i for i, cb in enumerate(callbacks) if isinstance(cb, reporters)), None)
        me = next(i for i, cb in enumerate(callbacks) if cb is self)
        if first is not None and first < me:
            callbacks.insert(first, callbacks.pop(me))

    # -- record -----------------------------------------------------------------------------
    def on_step_end(self, args, state, control, **kwargs):
        if self.probe is None:
            return
        loss = self._tap.take()
        self.probe.step(loss)  # adds the loss; or ends a step the scaler skipped (left out of the trace)
        step, self._ended = self._ended, self._ended + 1
        if self._live is not None:
            self._live.step(step, loss)
        if step % self.every == 0:
            trace = self.probe.trace
            if len(trace) and trace.steps[-1] == step:
                self._logs = step_scalars(trace, self.log_layers)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._logs or logs is None or "loss" not in logs:
            return
        logs.update(self._logs)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._logs)
        self._logs = {}

    # -- conclude ---------------------------------------------------------------------------
    def on_train_end(self, args, state, control, **kwargs):
        if self.probe is None:
            return
        from ..diagnose.api import diagnose

        self._unhook()
        try:
            self.diagnosis, why = diagnose(self.probe.trace), None
        except GradDoctorError as exc:
            self.diagnosis, why = None, str(exc)
        if not state.is_world_process_zero:
            return
        if self.print_report:
            from rich.console import Console

            from ..report.terminal import print_diagnosis

            console = Console()
            if self.diagnosis is None:
                console.print(f"graddoctor: no diagnosis ({why})", highlight=False, markup=False)
            else:
                print_diagnosis(self.diagnosis, console)
        if self._live is not None:
            self.run_id = self._live.finish("done", self.diagnosis)
            if self.report is not False and len(self.probe.trace):
                out = (Path(self.report) if self.report not in (None, True)
                       else self._live.store.path.parent / f"report-{self.run_id}.html")
                self.report_path = self._live.report(out)
            path = self._live.store.path
            self._live.store.close()
            self._live = None
            if self.print_report:
                where = f"; report: {self.report_path}" if self.report_path else ""
                print(f"graddoctor: run {self.run_id} in {path}{where}")

    def close(self) -> None:
        """Remove every hook (the probe's, the loss tap); after train() raised, the stored run ends 'failed'."""
        self._unhook()
        if self._live is not None:
            self._live.finish("failed")
            self._live.store.close()
            self._live = None

    def _unhook(self) -> None:
        if self._tap is not None:
            self._tap.__exit__(None, None, None)
            self._tap = None
        if self.probe is not None:
            self.probe.close()
