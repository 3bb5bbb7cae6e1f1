"""The stages one candidate goes through: build, screen at init, pilot, finish (and their timing).

Each trains with the Recipe (the user's step, optimizer and batches) through loop.py; the
untreated baseline goes through the same stages, so every comparison is like with like.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..diagnose.api import diagnose
from ..diagnose.findings import Diagnosis
from ..diagnose.structure import analyse
from .base import Patient, Remedy, Sample
from .loop import start_run, train_steps
from .recipe import Recipe
from .result import FINISH_EVERY, Trial

SCREEN_BATCH = 128  # in-memory data: samples in the screening forward/backward (the first rows)
# Record every step of a probed run, as `graddoctor.watch` does by default: the diagnosis that
# decides what is treated (and whether a finalist is cured) then sees the run the way a user's
# own probe sees it (a sparser record misses a divergence between two recorded steps and judges
# a learning rate too high from too few points).
EVERY = 1
WINDOW = 0.25  # streamed data: a segment's loss is the mean of its last quarter of step losses


def same_network(a: Patient, b: Patient) -> bool:
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


def screen(trial: Trial, recipe: Recipe, batch: object, seed: int, drop: set[str],
            base: Trial | None = None) -> None:
    """Checkup at init of the candidate as built; drop it if the treated finding is still there.

    A training-only candidate (learning rate, clipping, warmup) builds the baseline's network:
    its checkup is the baseline's, reused.
    """
    if trial.model is None:
        trial.model = trial.patient.build(seed)
    if base is not None and base.at_init is not None and same_network(trial.patient, base.patient):
        trial.at_init = base.at_init
    else:
        trial.at_init = checkup_step(trial.model, recipe.step, batch, seed)
    bad = trial.at_init.kinds() & drop
    if bad:
        trial.status, trial.note = "dropped at init", "still " + ", ".join(sorted(bad)) + " at initialisation"
        trial.model = None


def segment(trial: Trial, recipe: Recipe, steps: int, data_seed: int, probe: object | None = None,
            deadline: float | None = None) -> None:
    """Train `steps` more steps (recorded by `probe`, if given; fewer if `deadline` comes); the loss after them."""
    losses = train_steps(trial.run, recipe.batches(data_seed), recipe.step, steps, probe, deadline)
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


def _begin(trial: Trial, recipe: Recipe, seed: int) -> None:
    if trial.model is None:
        trial.model = trial.patient.build(seed)
    torch.manual_seed(seed)  # dropout and other randomness inside the model
    trial.run = start_run(trial.model, recipe.optimizer_factory(trial.patient), trial.patient.step_settings())


def start(trial: Trial, recipe: Recipe, seed: int, pilot: int) -> None:
    """Train the pilot segment (unprobed) of the network as built (seeded), building it if not screened."""
    _begin(trial, recipe, seed)
    segment(trial, recipe, pilot, seed)


def finish(trial: Trial, recipe: Recipe, seed: int, budget: int, deadline: float | None = None) -> None:
    """Train the rest of the budget under a probe (unless it diverged) and re-diagnose.

    A run the `deadline` (treat's max_seconds) cuts short is not finished: not judged a fix.
    """
    from ..probe.probe import watch

    if math.isfinite(trial.loss) and budget > trial.steps:
        torch.manual_seed(seed + 1)  # the model's randomness (dropout) as in the baseline's second segment
        with watch(trial.model, every=FINISH_EVERY, stats="full", scaler=trial.run.scaler) as probe:
            segment(trial, recipe, budget - trial.steps, seed + 1, probe, deadline)
        if trial.steps < budget and math.isfinite(trial.loss):
            trial.note = f"cut short by the time budget after {trial.steps} of {budget} steps: not judged"
            return
        trial.after = diagnose(probe.trace) if len(probe.trace) else trial.after


def baseline(trial: Trial, recipe: Recipe, seed: int, pilot: int, budget: int) -> None:
    """The untreated run: both segments (pilot, then the rest) under one probe, then its diagnosis.

    One trace of the whole run, every step recorded (as the user's own probe would), so the
    diagnosis that decides what is treated also sees a divergence in the first steps.
    """
    from ..probe.probe import watch

    _begin(trial, recipe, seed)
    with watch(trial.model, every=EVERY, stats="full", scaler=trial.run.scaler) as probe:
        t0 = time.perf_counter()
        segment(trial, recipe, pilot, seed, probe)
        trial.pilot_loss = trial.loss
        t1 = time.perf_counter()
        trial.timing["pilot"] = t1 - t0
        if math.isfinite(trial.loss) and budget > trial.steps:
            torch.manual_seed(seed + 1)  # reseeded as each finalist's is: other candidates run in between
            segment(trial, recipe, budget - trial.steps, seed + 1, probe)
        trial.timing["finish"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    trial.after = diagnose(probe.trace)
    trial.timing["diagnose"] = time.perf_counter() - t2
    trial.structure = analyse(probe.trace)  # what the remedies read (branches.py): the diagnosis' own


def candidate(remedies: Sequence[Remedy], base: Patient, sample: Sample, seed: int) -> Trial:
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


def guarded(trial: Trial, stage: str, fn: Callable[[], None]) -> None:
    """Run one stage of a candidate, timed; a remedy that breaks the model marks the trial, never treat()."""
    t0 = time.perf_counter()
    try:
        fn()
    except Exception as exc:  # the user's step, optimizer or model: any error fails this trial only
        trial.status, trial.note = "failed", f"{stage}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        trial.model = trial.run = None
    dt = time.perf_counter() - t0
    trial.seconds += dt
    trial.timing[stage] = trial.timing.get(stage, 0.0) + dt
