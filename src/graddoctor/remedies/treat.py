"""treat(): try the remedies the diagnosis points to, screen them at init, race the survivors.

Cost model, in optimizer steps (B = budget_steps, N = candidates that survive screening):
  baseline B  +  screening (one forward/backward each)  +  pilot N x B/4  +  finalists 1-2 x 3B/4
(finalists in pilot-loss order until one fixes the problem).
Every run, baseline included, trains in the same two segments (B/4 with the data order of
`seed`, then 3B/4 with that of `seed + 1`) from the same initial weights, so the finalists and
the baseline see exactly the same steps. Pairs are tried only when no single remedy fixes it.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from .. import progress, training
from ..data import Dataset
from ..diagnose.api import checkup, diagnose
from ..diagnose.findings import Diagnosis
from ..errors import GradDoctorError
from ..nets import NetSpec
from ..training import TrainConfig
from . import candidates
from .arguments import as_dataset, loss_name, patient_from, prior_loss
from .base import Patient, Remedy
from .result import TreatResult, Trial

# Optimizer steps per candidate. On digits a 20-layer net that can learn reaches a loss far
# below the untreated net's in 60 SGD steps (2.6 epochs; a full run is 10 epochs = 230 steps).
BUDGET_STEPS = 60
PILOT_FRACTION = 0.25  # the first segment, which every surviving candidate trains
FINALISTS = 2  # at most this many (lowest pilot loss first) train the rest; the first fix stops it
# "Lower than the baseline's loss" means lower by at least this fraction: same-config runs of
# the budget differ by a few percent between seeds, and a loss that merely stays at its
# initial value (chance) next to a diverged baseline is not a fix.
LOSS_MARGIN = 0.1
SCREEN_BATCH = 128  # samples in the screening forward/backward (the first of the training set)
# Probed steps per segment: the diagnosis judges the last half of them and needs at least 3
# (diagnose.thresholds.MIN_STEPS); recording is the probe's expensive part.
RECORDS = 8
# A candidate showing any of these at initialisation is dropped before training, as is one
# still showing the finding being treated.
FATAL_AT_INIT = frozenset({"vanishing", "exploding", "non_finite"})


def _same_network(a: Patient, b: Patient) -> bool:
    """True when two patients build the same initial network (only the config differs)."""
    return a.spec == b.spec and a.model is b.model and a.input_stats is b.input_stats


def _screen(trial: Trial, batch: tuple[Tensor, Tensor], seed: int, crit: Callable, drop: set[str],
            base: Trial | None = None) -> None:
    """checkup(steps=0) of the candidate as built; drop it if the treated finding is still there.

    A config-only candidate (learning rate, clipping) builds the baseline's network: its
    checkup is the baseline's, reused.
    """
    model = trial.patient.build(seed)
    if base is not None and base.at_init is not None and _same_network(trial.patient, base.patient):
        trial.at_init = base.at_init
    else:
        p = next(model.parameters())
        x = batch[0].to(dtype=p.dtype, device=p.device)
        trial.at_init = checkup(model, x, batch[1].to(p.device), crit, steps=0)
    trial.model = model  # checkup leaves it exactly as built: train this one
    bad = trial.at_init.kinds() & drop
    if bad:
        trial.status, trial.note = "dropped at init", "still " + ", ".join(sorted(bad)) + " at initialisation"
        trial.model = None


def _segment(trial: Trial, data: Dataset, steps: int, data_seed: int, every: int | None) -> None:
    """Train `steps` more steps (same optimizer); probe every `every` steps and diagnose, if given."""
    from ..probe.probe import watch

    cfg = replace(trial.patient.config, max_steps=steps, seed=data_seed)
    if every is not None:
        with watch(trial.model, every=every, stats="full") as probe:
            hist = training.train(trial.model, data, cfg, probe=probe, optimizer=trial.optimizer,
                                  progress_bar=False)
        trial.after = diagnose(probe.trace) if len(probe.trace) else trial.after
    else:
        hist = training.train(trial.model, data, cfg, optimizer=trial.optimizer, progress_bar=False)
    loss = hist.train_loss[-1] if hist.train_loss else math.nan
    trial.loss = loss if hist.diverged_at is None and math.isfinite(loss) else math.inf
    trial.min_step_loss = min([trial.min_step_loss, *(v for v in hist.step_loss if math.isfinite(v))])
    trial.val_acc = hist.final_val_acc
    trial.steps += len(hist.step_loss)


def _start(trial: Trial, data: Dataset, seed: int, pilot: int, every: int | None = None) -> None:
    """Train the pilot segment of the network as built (seeded), building it if not screened."""
    if trial.model is None:
        trial.model = trial.patient.build(seed)
    torch.manual_seed(seed)  # dropout and other randomness inside the model
    trial.optimizer = training.make_optimizer(trial.model, trial.patient.config)
    _segment(trial, data, pilot, seed, every)


def _finish(trial: Trial, data: Dataset, seed: int, budget: int) -> None:
    """Train the rest of the budget under a probe (unless it diverged) and re-diagnose."""
    if math.isfinite(trial.loss) and budget > trial.steps:
        rest = budget - trial.steps
        _segment(trial, data, rest, seed + 1, every=max(1, math.ceil(rest / RECORDS)))


def _candidate(remedies: Sequence[Remedy], base: Patient, data: Dataset, seed: int) -> Trial:
    """Apply the remedies in order to the untreated patient (seeded: re-initialisation is random)."""
    torch.manual_seed(seed)
    patient, idle = base, []
    for r in remedies:
        before = len(patient.changes)
        patient = r.apply(patient, data)
        new = patient.changes[before:]
        if all(c.note for c in new):  # this member changed nothing (and says why)
            idle.append("; ".join(c.note for c in new) or f"{r.label}: nothing to change")
    trial = Trial(" + ".join(r.label for r in remedies), patient, "not fixed")
    if idle:
        trial.status, trial.note = "not applicable", "; ".join(dict.fromkeys(idle))
    return trial


def _guarded(trial: Trial, fn: Callable[[], None]) -> None:
    """Run one stage of a candidate; a remedy that breaks the model marks the trial, never treat()."""
    t0 = time.perf_counter()
    try:
        fn()
    except (GradDoctorError, RuntimeError) as exc:
        trial.status, trial.note = "not applicable", f"failed: {str(exc).splitlines()[0]}"
        trial.model = trial.optimizer = None
    trial.seconds += time.perf_counter() - t0


def _run_round(result: TreatResult, groups: list[tuple[Remedy, ...]], data: Dataset, seed: int,
               crit: Callable, desc: str, progress_bar: bool) -> list[Trial]:
    """Screen every candidate, pilot the survivors, finish the best FINALISTS; append the Trials."""
    base, bad = result.baseline, result.target_kinds | FATAL_AT_INIT
    batch = (data.x_train[:SCREEN_BATCH], data.y_train[:SCREEN_BATCH])
    pilot, budget = result.pilot_steps, result.budget_steps
    trials = []
    with progress.bar(len(groups) + FINALISTS, desc, enabled=progress_bar) as bar:
        for group in groups:
            t0 = time.perf_counter()
            trial = _candidate(group, base.patient, data, seed)
            trial.seconds = time.perf_counter() - t0
            bar.update(0, candidate=trial.label)
            if trial.status == "not fixed":
                _guarded(trial, lambda: _screen(trial, batch, seed, crit, bad, base))
            if trial.status == "not fixed":
                _guarded(trial, lambda: _start(trial, data, seed, pilot))
            trials.append(trial)
            result.trials.append(trial)
            bar.update(1)
        racing = sorted((t for t in trials if t.status == "not fixed"), key=lambda t: t.loss)
        for i, trial in enumerate(racing):
            trial.pilot_loss = trial.loss
            done = any(t.fixed for t in trials)  # the best-piloted fix is found: the rest stop here
            if done or i >= FINALISTS or not math.isfinite(trial.loss):
                trial.status, trial.note = "stopped after pilot", f"pilot loss {trial.loss:.4g}"
                trial.model = trial.optimizer = None
                continue
            bar.update(0, candidate=trial.label)
            _guarded(trial, lambda: _finish(trial, data, seed, budget))
            # the treated finding is gone, and no other gradient pathology took its place
            gone = trial.after is not None and not (trial.after.kinds() & bad)
            beats = trial.loss < (1 - LOSS_MARGIN) * result.reference_loss
            if trial.status == "not fixed" and gone and beats:
                trial.status = "fixed"
            bar.update(1, fixed=sum(t.fixed for t in result.trials))
    return trials


def treat(model_factory: NetSpec | nn.Module | Callable[[], nn.Module], data: object,
          loss_fn: object = None, diagnosis: Diagnosis | None = None, budget_steps: int = BUDGET_STEPS,
          seed: int = 0, *, config: TrainConfig | None = None, pairs: bool = True,
          progress_bar: bool = True) -> TreatResult:
    """Try the remedies for a diagnosis; measure which fix it (see TreatResult).

    Without `diagnosis`, the untreated network's own is used: its training run's findings plus
    those seen at initialisation that training did not show (e.g. a bottleneck layer that
    slows learning without stopping it).
    """
    t0 = time.perf_counter()
    if budget_steps < 2:
        raise GradDoctorError(f"budget_steps must be at least 2, got {budget_steps}")
    data = as_dataset(data, seed)
    config = config or TrainConfig()
    cfg = replace(config, loss=loss_name(loss_fn, config), max_steps=budget_steps, seed=seed)
    crit = training.loss_fn(cfg.loss)
    base = Trial("baseline", patient_from(model_factory, cfg, seed), "baseline")
    pilot = max(1, round(budget_steps * PILOT_FRACTION))
    if diagnosis is not None and diagnosis.healthy:  # nothing to treat: no run, no changes
        return TreatResult(diagnosis, [base], budget_steps, pilot_steps=pilot,
                           seconds=time.perf_counter() - t0)
    _screen(base, (data.x_train[:SCREEN_BATCH], data.y_train[:SCREEN_BATCH]), seed, crit, set())
    # every pilot step probed: a baseline that diverges in its first steps is diagnosed too
    _start(base, data, seed, pilot, every=1)
    base.pilot_loss = base.loss
    _finish(base, data, seed, budget_steps)
    base.seconds = time.perf_counter() - t0
    diagnosis = diagnosis or candidates.combined(base.after, base.at_init)
    result = TreatResult(diagnosis, [base], budget_steps, pilot_steps=pilot,
                         prior_loss=prior_loss(data, cfg.loss))
    ranked = candidates.singles(result.diagnosis, base.patient, data)
    tried = _run_round(result, [(r,) for r in ranked], data, seed, crit, "treat: singles", progress_bar)
    if pairs and ranked and result.best is None:
        by_label = {r.label: r for r in ranked}
        best_first = [by_label[t.label] for t in sorted(tried, key=lambda t: t.loss)
                      if math.isfinite(t.loss)]
        _run_round(result, candidates.pairs(result.diagnosis, ranked, best_first), data, seed, crit,
                   "treat: pairs", progress_bar)
    result.seconds = time.perf_counter() - t0
    return result
