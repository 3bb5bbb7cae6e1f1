"""treat(): try the remedies the diagnosis points to, screen them at init, race the survivors.

Cost model, in optimizer steps (B = budget_steps, N = candidates that survive screening):
  baseline B  +  screening (one forward/backward each)  +  pilot N x B/4  +  finalists 1-2 x 3B/4
(finalists in pilot-loss order until one fixes the problem).
Every run, baseline included, trains in the same two segments (B/4 with the data order of
`seed`, then 3B/4 with that of `seed + 1`) from the same initial weights, with the user's own
step and optimizer (recipe.py, loop.py, stages.py), so the finalists and the baseline see exactly the
same batches. Pairs are tried only when no single remedy fixes it.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from .. import progress
from ..diagnose.findings import Diagnosis
from ..errors import GradDoctorError
from ..nets import NetSpec
from ..training import TrainConfig
from . import candidates, stages
from .base import Patient, Remedy, Sample
from .recipe import Recipe, recipe_from
from .result import TreatResult, Trial

# Optimizer steps per candidate. On digits a 20-layer net that can learn reaches a loss far
# below the untreated net's in 60 SGD steps (2.6 epochs; a full run is 10 epochs = 230 steps).
BUDGET_STEPS = 60
PILOT_FRACTION = 0.25  # the first segment, which every surviving candidate trains
FINALISTS = 2  # at most this many (lowest pilot loss first) train the rest; the first fix stops it
# "Lower than the baseline's loss" means lower by at least this fraction. Against a baseline
# that trained: PAIRED_MARGIN (every run sees the same batches from the same seed, so the
# difference is the remedy's, not noise; a planted fault that stalls training late can cost
# only a few percent of the loss within the budget). Against one that diverged (its loss to
# beat is the lowest it reached): LOSS_MARGIN, so that staying at the initial loss is no fix.
LOSS_MARGIN = 0.1
PAIRED_MARGIN = 0.02
# A candidate showing any of these at initialisation is dropped before training, as is one
# still showing the finding being treated.
FATAL_AT_INIT = frozenset({"vanishing", "exploding", "non_finite"})


def _run_round(result: TreatResult, groups: list[tuple[Remedy, ...]], recipe: Recipe, sample: Sample,
               seed: int, desc: str, progress_bar: bool) -> list[Trial]:
    """Screen every candidate, pilot the survivors, finish the best FINALISTS; append the Trials."""
    base, bad = result.baseline, result.target_kinds | FATAL_AT_INIT
    batch = stages.screen_batch(recipe, seed)
    pilot, budget = result.pilot_steps, result.budget_steps
    trials = []
    with progress.bar(len(groups) + FINALISTS, desc, enabled=progress_bar) as bar:
        for group in groups:
            t0 = time.perf_counter()
            trial = stages.candidate(group, base.patient, sample, seed)
            trial.timing["changes"] = trial.seconds = time.perf_counter() - t0
            bar.update(0, candidate=trial.label)
            # one more pilot only while the rests of the finalists it makes possible still fit after it
            # (two once two were piloted): a pilot that eats the finalists' time leaves no fix at all
            finalists = min(FINALISTS, 1 + sum(t.steps > 0 for t in trials))
            if trial.status == "not fixed" and not result.affords(pilot, finalists * (budget - pilot)):
                trial.status, trial.note = "not tried", result.over_budget()
            if trial.status == "not fixed":
                stages.guarded(trial, "build", lambda: setattr(trial, "model", trial.patient.build(seed)))
            if trial.status == "not fixed":
                stages.guarded(trial, "screen", lambda: stages.screen(trial, recipe, batch, seed, bad, base))
            if trial.status == "not fixed":
                stages.guarded(trial, "pilot", lambda: stages.start(trial, recipe, seed, pilot))
            trials.append(trial)
            result.trials.append(trial)
            bar.update(1)
        racing = candidates.race_order([t for t in trials if t.status == "not fixed"])
        for i, trial in enumerate(racing):
            trial.pilot_loss = trial.loss
            done = any(t.fixed for t in trials)  # the best-piloted fix is found: the rest stop here
            if done or i >= FINALISTS or not math.isfinite(trial.loss) or \
                    not result.affords(0, budget - trial.steps, new_candidate=False):
                trial.status = "stopped after pilot"
                trial.note = f"pilot loss {trial.loss:.4g}" if done or i >= FINALISTS or \
                    not math.isfinite(trial.loss) else f"pilot loss {trial.loss:.4g}; {result.over_budget()}"
                trial.model = trial.run = None
                continue
            bar.update(0, candidate=trial.label)
            stages.guarded(trial, "finish", lambda: stages.finish(trial, recipe, seed, budget, result.deadline()))
            # the treated finding is gone, and no other gradient pathology took its place
            gone = trial.after is not None and not (trial.after.kinds() & bad)
            margin = PAIRED_MARGIN if math.isfinite(base.loss) else LOSS_MARGIN
            beats = trial.loss < (1 - margin) * result.reference_loss
            if trial.status == "not fixed" and trial.steps >= budget and gone and beats:
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
          max_seconds: float | None = None, progress_bar: bool = True) -> TreatResult:
    """Try the remedies for a diagnosis; measure which fix it, in your own training step (TreatResult).

    `data`: a DataLoader, a list of batches or a function returning a fresh iterable (streamed:
    each candidate sees the same batches in the same order), or in memory: a graddoctor
    Dataset / (inputs, targets). `train_step(model, batch) -> loss` is your forward + loss
    (default: loss_fn(model(inputs), targets), loss_fn cross-entropy unless given);
    `make_optimizer(params) -> optimizer` (or (optimizer, scheduler)) yours (default: the
    TrainConfig's SGD/Adam). Without `diagnosis`, the untreated network's own is used: its
    training run's findings plus those seen at initialisation that training did not show.
    `max_steps` caps the optimizer steps of everything together (baseline and candidates, at
    least 2 x budget_steps), `max_seconds` the wall time (e.g. that of one training run of
    yours); candidates that would exceed either are listed as "not tried".
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
    stages.guarded(base, "build", lambda: setattr(base, "model", base.patient.build(seed)))
    if base.status == "failed":
        raise GradDoctorError(f"the untreated model cannot be built: {base.note}")
    stages.guarded(base, "screen", lambda: setattr(base, "at_init", stages.checkup_step(base.model, recipe.step,
                                                                            stages.screen_batch(recipe, seed), seed)))
    stages.guarded(base, "train", lambda: stages.baseline(base, recipe, seed, pilot, budget_steps))
    if base.status == "failed":
        raise GradDoctorError(f"the untreated model cannot be trained with this step and data: {base.note}")
    base.seconds = time.perf_counter() - t0
    diagnosis = diagnosis or candidates.combined(base.after, base.at_init)
    result = TreatResult(diagnosis, [base], budget_steps, pilot_steps=pilot, prior_loss=recipe.prior_loss,
                         max_steps=max_steps, max_seconds=max_seconds, started=t0)
    sample = replace(recipe.sample(), budget_steps=budget_steps, structure=base.structure)
    ranked, skipped = candidates.singles(result.diagnosis, base.patient, sample, base.at_init)
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
