"""treat(): try the remedies the diagnosis points to, screen them at init, race the survivors.

Cost model, in optimizer steps (B = budget_steps, N = candidates that survive screening):
  baseline B  +  screening (one forward/backward each)  +  pilot N x B/4  +  finalists 1-2 x 3B/4
(finalists in pilot-loss order until one fixes the problem).
Every run, baseline included, trains in the same two segments (B/4 with the data order of
`seed`, then 3B/4 with that of `seed + 1`) from the same initial weights, with the user's own
step and optimizer (recipe.py, loop.py), so the finalists and the baseline see exactly the
same batches. Pairs are tried only when no single remedy fixes it.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import nn

from .. import progress
from ..diagnose.api import diagnose
from ..diagnose.findings import Diagnosis
from ..errors import GradDoctorError
from ..nets import NetSpec
from ..training import TrainConfig
from . import candidates
from .base import Patient, Remedy, Sample
from .loop import start_run, train_steps
from .recipe import Recipe, recipe_from
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
SCREEN_BATCH = 128  # in-memory data: samples in the screening forward/backward (the first rows)
# Probed steps per segment: the diagnosis judges the last half of them and needs at least 3
# (diagnose.thresholds.MIN_STEPS); recording is the probe's expensive part.
RECORDS = 8
# The untreated run's pilot is probed every PILOT_EVERY steps; one that diverges there (and so
# has no second segment) is run again, probed at every step up to its divergence.
PILOT_EVERY = 2
# A candidate showing any of these at initialisation is dropped before training, as is one
# still showing the finding being treated.
FATAL_AT_INIT = frozenset({"vanishing", "exploding", "non_finite"})
WINDOW = 0.25  # streamed data: a segment's loss is the mean of its last quarter of step losses


def _same_network(a: Patient, b: Patient) -> bool:
    """True when two patients build the same initial network (only training settings differ)."""
    ops = lambda p: [c for c in p.changes if c.op]
    return a.spec == b.spec and a.model is b.model and ops(a) == ops(b)


def screen_batch(recipe: Recipe, seed: int) -> object:
    """The batch every candidate is checked on at initialisation."""
    d = recipe.dataset
    return (d.x_train[:SCREEN_BATCH], d.y_train[:SCREEN_BATCH]) if d is not None else next(recipe.batches(seed))


def checkup_step(model: nn.Module, step: Callable, batch: object, seed: int) -> Diagnosis:
    """Diagnosis of one forward/backward of the user's step at init; the weights and buffers are restored."""
    from ..probe.probe import watch

    saved = copy.deepcopy(model.state_dict())
    torch.manual_seed(seed)
    try:
        with watch(model, every=1, stats="full") as probe:
            model.train()
            loss = step(model, batch)
            loss.backward()
            probe.step(loss)
        return diagnose(probe.trace)
    finally:
        with torch.no_grad():
            model.load_state_dict(saved)
        for p in model.parameters():
            p.grad = None


def _screen(trial: Trial, recipe: Recipe, batch: object, seed: int, drop: set[str],
            base: Trial | None = None) -> None:
    """Checkup at init of the candidate as built; drop it if the treated finding is still there.

    A training-only candidate (learning rate, clipping, warmup) builds the baseline's network:
    its checkup is the baseline's, reused.
    """
    if trial.model is None:
        trial.model = trial.patient.build(seed)
    if base is not None and base.at_init is not None and _same_network(trial.patient, base.patient):
        trial.at_init = base.at_init
    else:
        trial.at_init = checkup_step(trial.model, recipe.step, batch, seed)
    bad = trial.at_init.kinds() & drop
    if bad:
        trial.status, trial.note = "dropped at init", "still " + ", ".join(sorted(bad)) + " at initialisation"
        trial.model = None


def _segment(trial: Trial, recipe: Recipe, steps: int, data_seed: int, every: int | None) -> None:
    """Train `steps` more steps; probe every `every` steps and diagnose, if given."""
    from ..probe.probe import watch

    run, batches = trial.run, recipe.batches(data_seed)
    if every is not None:
        with watch(trial.model, every=every, stats="full", scaler=run.scaler) as probe:
            losses = train_steps(run, batches, recipe.step, steps, probe)
        trial.after = diagnose(probe.trace) if len(probe.trace) else trial.after
    else:
        losses = train_steps(run, batches, recipe.step, steps)
    finite = [v for v in losses if math.isfinite(v)]
    measured = recipe.evaluate(trial.model) if len(finite) == len(losses) else None
    if measured is not None:
        loss, trial.val_acc = measured
    else:
        tail = finite[-max(1, math.ceil(len(losses) * WINDOW)):]
        loss = sum(tail) / len(tail) if tail and len(finite) == len(losses) else math.inf
    trial.loss = loss if math.isfinite(loss) else math.inf
    trial.min_step_loss = min([trial.min_step_loss, *finite])
    trial.steps += len(losses)


def _start(trial: Trial, recipe: Recipe, seed: int, pilot: int, every: int | None = None) -> None:
    """Train the pilot segment of the network as built (seeded), building it if not screened."""
    if trial.model is None:
        trial.model = trial.patient.build(seed)
    torch.manual_seed(seed)  # dropout and other randomness inside the model
    trial.run = start_run(trial.model, recipe.optimizer_factory(trial.patient), trial.patient.step_settings())
    _segment(trial, recipe, pilot, seed, every)


def _finish(trial: Trial, recipe: Recipe, seed: int, budget: int) -> None:
    """Train the rest of the budget under a probe (unless it diverged) and re-diagnose."""
    if math.isfinite(trial.loss) and budget > trial.steps:
        rest = budget - trial.steps
        _segment(trial, recipe, rest, seed + 1, every=max(1, math.ceil(rest / RECORDS)))


def _candidate(remedies: Sequence[Remedy], base: Patient, sample: Sample, seed: int) -> Trial:
    """Apply the remedies in order to the untreated patient."""
    patient, idle = base, []
    for r in remedies:
        before = len(patient.changes)
        patient = r.apply(patient, sample)
        new = patient.changes[before:]
        if all(c.note for c in new):  # this member changed nothing (and says why)
            idle.append("; ".join(c.note for c in new) or f"{r.label}: nothing to change")
    trial = Trial(" + ".join(r.label for r in remedies), patient, "not fixed")
    if idle:
        trial.status, trial.note = "not applicable", "; ".join(dict.fromkeys(idle))
    return trial


def _guarded(trial: Trial, stage: str, fn: Callable[[], None]) -> None:
    """Run one stage of a candidate, timed; a remedy that breaks the model marks the trial, never treat()."""
    t0 = time.perf_counter()
    try:
        fn()
    except (GradDoctorError, RuntimeError, ValueError, TypeError) as exc:
        trial.status, trial.note = "failed", f"{stage}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        trial.model = trial.run = None
    dt = time.perf_counter() - t0
    trial.seconds += dt
    trial.timing[stage] = trial.timing.get(stage, 0.0) + dt


def _run_round(result: TreatResult, groups: list[tuple[Remedy, ...]], recipe: Recipe, sample: Sample,
               seed: int, desc: str, progress_bar: bool) -> list[Trial]:
    """Screen every candidate, pilot the survivors, finish the best FINALISTS; append the Trials."""
    base, bad = result.baseline, result.target_kinds | FATAL_AT_INIT
    batch = screen_batch(recipe, seed)
    pilot, budget = result.pilot_steps, result.budget_steps
    trials = []
    with progress.bar(len(groups) + FINALISTS, desc, enabled=progress_bar) as bar:
        for group in groups:
            t0 = time.perf_counter()
            trial = _candidate(group, base.patient, sample, seed)
            trial.timing["changes"] = trial.seconds = time.perf_counter() - t0
            bar.update(0, candidate=trial.label)
            if trial.status == "not fixed" and not result.affords(pilot + FINALISTS * (budget - pilot)):
                trial.status = "not tried"
                trial.note = (f"over the budget: max_steps={result.max_steps} steps, or their time "
                              f"({result.steps} steps used)")
            if trial.status == "not fixed":
                _guarded(trial, "build", lambda: setattr(trial, "model", trial.patient.build(seed)))
            if trial.status == "not fixed":
                _guarded(trial, "screen", lambda: _screen(trial, recipe, batch, seed, bad, base))
            if trial.status == "not fixed":
                _guarded(trial, "pilot", lambda: _start(trial, recipe, seed, pilot))
            trials.append(trial)
            result.trials.append(trial)
            bar.update(1)
        racing = sorted((t for t in trials if t.status == "not fixed"), key=lambda t: t.loss)
        for i, trial in enumerate(racing):
            trial.pilot_loss = trial.loss
            done = any(t.fixed for t in trials)  # the best-piloted fix is found: the rest stop here
            if done or i >= FINALISTS or not math.isfinite(trial.loss):
                trial.status, trial.note = "stopped after pilot", f"pilot loss {trial.loss:.4g}"
                trial.model = trial.run = None
                continue
            bar.update(0, candidate=trial.label)
            _guarded(trial, "finish", lambda: _finish(trial, recipe, seed, budget))
            # the treated finding is gone, and no other gradient pathology took its place
            gone = trial.after is not None and not (trial.after.kinds() & bad)
            beats = trial.loss < (1 - LOSS_MARGIN) * result.reference_loss
            if trial.status == "not fixed" and gone and beats:
                trial.status = "fixed"
            bar.update(1, fixed=sum(t.fixed for t in result.trials))
    return trials


def _patient(subject: NetSpec | nn.Module | Callable[[], nn.Module], config: TrainConfig, seed: int,
             own_optimizer: bool) -> Patient:
    """The untreated Patient: a NetSpec, or the user's model (called once if a factory, seeded)."""
    if isinstance(subject, NetSpec):
        return Patient(config, spec=subject, own_optimizer=own_optimizer)
    torch.manual_seed(seed)
    model = subject if isinstance(subject, nn.Module) else subject()
    if not isinstance(model, nn.Module):
        raise GradDoctorError(f"model_factory must be a NetSpec, an nn.Module or a function returning "
                              f"one; it returned {type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise GradDoctorError(f"{type(model).__name__} has no parameters to treat")
    return Patient(config, model=model, own_optimizer=own_optimizer)  # a template: never trained


def treat(model_factory: NetSpec | nn.Module | Callable[[], nn.Module], data: object,
          loss_fn: object = None, diagnosis: Diagnosis | None = None, budget_steps: int = BUDGET_STEPS,
          seed: int = 0, *, train_step: Callable | None = None, make_optimizer: Callable | None = None,
          config: TrainConfig | None = None, pairs: bool = True, max_steps: int | None = None,
          progress_bar: bool = True) -> TreatResult:
    """Try the remedies for a diagnosis; measure which fix it, in your own training step (TreatResult).

    `data`: a DataLoader, a list of batches or a function returning a fresh iterable (streamed:
    each candidate sees the same batches in the same order), or in memory: a graddoctor
    Dataset / (inputs, targets). `train_step(model, batch) -> loss` is your forward + loss
    (default: loss_fn(model(inputs), targets), loss_fn cross-entropy unless given);
    `make_optimizer(params) -> optimizer` (or (optimizer, scheduler)) yours (default: the
    TrainConfig's SGD/Adam). Without `diagnosis`, the untreated network's own is used: its
    training run's findings plus those seen at initialisation that training did not show.
    `max_steps` caps the optimizer steps of everything together (baseline and candidates, at
    least 2 x budget_steps): candidates that would exceed it are listed as "not tried".
    """
    t0 = time.perf_counter()
    if budget_steps < 2:
        raise GradDoctorError(f"budget_steps must be at least 2, got {budget_steps}")
    if max_steps is not None and max_steps < 2 * budget_steps:
        raise GradDoctorError(f"max_steps must be at least 2 x budget_steps ({2 * budget_steps}): the untreated "
                              f"run and one candidate; got {max_steps}")
    config = config or TrainConfig()
    cfg = replace(config, max_steps=budget_steps, seed=seed)
    recipe = recipe_from(model_factory, data, loss_fn, train_step, make_optimizer, cfg, seed)
    base = Trial("baseline", _patient(model_factory, cfg, seed, make_optimizer is not None), "baseline")
    pilot = max(1, round(budget_steps * PILOT_FRACTION))
    if diagnosis is not None and diagnosis.healthy:  # nothing to treat: no run, no changes
        return TreatResult(diagnosis, [base], budget_steps, pilot_steps=pilot,
                           seconds=time.perf_counter() - t0)
    _guarded(base, "build", lambda: setattr(base, "model", base.patient.build(seed)))
    if base.status == "failed":
        raise GradDoctorError(f"the untreated model cannot be built: {base.note}")
    _guarded(base, "screen", lambda: setattr(base, "at_init", checkup_step(base.model, recipe.step,
                                                                            screen_batch(recipe, seed), seed)))
    # the pilot probed too: a baseline that diverges in its first steps is diagnosed as well
    _guarded(base, "pilot", lambda: _start(base, recipe, seed, pilot, every=PILOT_EVERY))
    if base.status != "failed" and not math.isfinite(base.loss) and PILOT_EVERY > 1:
        base.model = None  # diverged between two recorded steps, maybe: again, every step recorded
        _guarded(base, "pilot", lambda: _start(base, recipe, seed, pilot, every=1))
    base.pilot_loss = base.loss
    _guarded(base, "finish", lambda: _finish(base, recipe, seed, budget_steps))
    if base.status == "failed":
        raise GradDoctorError(f"the untreated model cannot be trained with this step and data: {base.note}")
    base.seconds = time.perf_counter() - t0
    diagnosis = diagnosis or candidates.combined(base.after, base.at_init)
    result = TreatResult(diagnosis, [base], budget_steps, pilot_steps=pilot, prior_loss=recipe.prior_loss,
                         max_steps=max_steps, started=t0)
    sample = replace(recipe.sample(), budget_steps=budget_steps)
    ranked, skipped = candidates.singles(result.diagnosis, base.patient, sample)
    tried = _run_round(result, [(r,) for r in ranked], recipe, sample, seed, "treat: singles", progress_bar)
    if pairs and ranked and result.best is None:
        by_label = {r.label: r for r in ranked}
        best_first = [by_label[t.label] for t in sorted(tried, key=lambda t: t.loss)
                      if math.isfinite(t.loss)]
        _run_round(result, candidates.pairs(result.diagnosis, ranked, best_first), recipe, sample, seed,
                   "treat: pairs", progress_bar)
    result.trials += [Trial(r.label, base.patient, "not applicable", note=why) for r, why in skipped]
    result.seconds = time.perf_counter() - t0
    return result
