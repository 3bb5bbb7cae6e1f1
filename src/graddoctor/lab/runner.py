"""The sweep runner: Jobs trained under the probe in worker processes or Ray tasks, each stored as it finishes.

Workers compute (build, train, probe, diagnose) and send back the Trace, History and
Diagnosis; this process alone writes the RunStore, one finished run at a time, so a sweep
killed half-way keeps every finished run and `resume=True` picks up from there (a stored,
finished run with the same Job.key() is read back instead of being trained again).
Workers are spawned, not forked: a forked child inherits torch's thread pools in an
undefined state. Each worker uses one thread; `workers` of them share the machine.

Backends: "local" (this process, or a pool of `workers` processes; the first failure stops the
sweep) and "ray" (ray_backend.py: one Ray task per run on a cluster at `address` or a local Ray
instance; a failure is reported at the end, after the other runs finished and were stored).
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from .. import data as data_mod
from .. import nets, progress, training
from ..diagnose.api import diagnose
from ..diagnose.findings import Diagnosis
from ..errors import GradDoctorError, require, unknown
from ..probe.trace import Trace
from ..store import RunStore
from ..training import History
from .grid import Job, probe_every
from .ray_backend import Failed

KIND = "lab"  # the runs.kind of every run the lab and the sweeps store
BACKENDS = ("local", "ray")
Outcome = tuple[Trace, History | None, Diagnosis | None]  # what a job's run() sends back


class Runnable(Protocol):
    """What the runner runs: a grid Job, or another experiment's job (lab/rnn.py's RnnJob)."""

    @property
    def label(self) -> str: ...
    def key(self) -> str: ...  # a digest of everything that determines the result (--resume)
    def run(self) -> Outcome: ...  # compute only, no I/O: it may run in a worker process
    def spec_dict(self) -> dict: ...  # the stored run's spec column
    def stored_config(self) -> dict: ...  # the stored run's config column; includes "key"
    # optional: `resources`, a Ray task's request ({"num_cpus": 1, "num_gpus": 0} by default)


@dataclass
class Result:
    """One finished Job: its stored run id and what was measured."""

    job: Runnable
    run_id: int
    trace: Trace
    history: History | None  # None for jobs outside the training loop (e.g. the rnn experiment)
    diagnosis: Diagnosis | None
    reused: bool = False  # read back from the store (resume), not trained now


@lru_cache(maxsize=4)
def dataset(name: str, seed: int, image: bool = False) -> data_mod.Dataset:
    """A data set by name, loaded once per process (image-shaped for CNNs)."""
    return data_mod.load(name, seed=seed, image=image)


def execute(job: Job) -> tuple[Trace, History, Diagnosis | None]:
    """Build, train under the probe and diagnose one Job (no I/O; runs in any process)."""
    from ..probe.probe import watch

    data = dataset(job.data, job.config.seed, image=job.spec.kind == "cnn")
    if tuple(data.in_shape) != tuple(job.spec.in_shape) or data.n_classes != job.spec.out_features:
        raise GradDoctorError(f"{job.label}: the network takes {job.spec.in_shape} -> {job.spec.out_features} "
                              f"but {data.name} is {data.in_shape} -> {data.n_classes} classes")
    model = nets.build(job.spec, seed=job.config.seed)
    every = probe_every(job.config, len(data.x_train), job.records)
    with watch(model, every=every, stats="full") as probe:
        history = training.train(model, data, job.config, probe=probe, progress_bar=False)
    trace = probe.trace
    trace.meta.update(label=job.label, group=job.group)
    try:
        diagnosis = diagnose(trace)
    except GradDoctorError:  # e.g. no finite error signal was recorded at all
        diagnosis = None
    return trace, history, diagnosis


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # `workers` processes share the cores; one thread each


def _run_job(job: Runnable) -> Outcome:
    return job.run()


def local(jobs: Sequence[Runnable], workers: int) -> Iterator[tuple[int, Outcome]]:
    """The local backend: (index, outcome) of each job as it finishes, in this process or a pool.

    The Ray backend (ray_backend.runs) is another generator with this signature.
    """
    if workers == 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            yield i, job.run()
        return
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker) as pool:
        futures = {pool.submit(_run_job, job): i for i, job in enumerate(jobs)}
        try:
            for fut in cf.as_completed(futures):
                i = futures[fut]
                try:
                    yield i, fut.result()
                except GradDoctorError as exc:
                    raise GradDoctorError(f"run {jobs[i].label!r} failed: {exc}") from None
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def finished(store: RunStore) -> dict[str, int]:
    """Job key -> id of the latest finished run with that key."""
    return {r.config["key"]: r.id for r in store.runs(KIND)
            if r.status == "done" and isinstance(r.config, dict) and "key" in r.config}


def load(store: RunStore, job: Runnable, run_id: int) -> Result:
    """A stored run read back as a Result."""
    return Result(job, run_id, store.load_trace(run_id), store.load_history(run_id),
                  store.load_diagnosis(run_id), reused=True)


def _save(store: RunStore, job: Runnable, outcome: Outcome) -> Result:
    trace, history, diagnosis = outcome
    run_id = store.save_run(job.spec_dict(), job.stored_config(), trace, history, diagnosis, kind=KIND)
    return Result(job, run_id, trace, history, diagnosis)


def run_jobs(jobs: Sequence[Runnable], store: RunStore | str | Path, workers: int | None = 1, resume: bool = False,
             progress_bar: bool = True, description: str = "runs", backend: str = "local",
             address: str | None = None) -> list[Result]:
    """Run every Job, storing each as it finishes; results in job order.

    backend="local": in `workers` processes (None: 1). backend="ray": one Ray task per Job on the
    cluster at `address` (None: a local Ray instance), at most `workers` at a time (None: all).
    """
    if backend not in BACKENDS:
        raise unknown("backend", backend, BACKENDS)
    if workers is not None and workers < 1:
        raise GradDoctorError(f"workers must be at least 1, got {workers}")
    if address is not None and backend != "ray":
        raise GradDoctorError(f"an address ({address!r}) is for a Ray cluster: add backend='ray' (--backend ray)")
    if not jobs:
        raise GradDoctorError("the grid is empty: nothing to run")
    if backend == "ray":
        require("ray", "ray")  # before anything runs: the install hint
    own = not isinstance(store, RunStore)
    st = RunStore(store) if own else store
    try:
        return _run(list(jobs), st, workers, resume, progress_bar, description, backend, address)
    finally:
        if own:
            st.close()


def _backend(name: str, jobs: list[Runnable], workers: int | None, address: str | None) -> Iterator:
    if name == "ray":
        from .ray_backend import runs

        return runs(jobs, address, workers)
    return local(jobs, workers or 1)


def _run(jobs: list[Runnable], store: RunStore, workers: int | None, resume: bool, progress_bar: bool,
         description: str, backend: str = "local", address: str | None = None) -> list[Result]:
    out: list[Result | None] = [None] * len(jobs)
    done = finished(store) if resume else {}
    todo = []
    for i, job in enumerate(jobs):
        if job.key() in done:
            out[i] = load(store, job, done[job.key()])
        else:
            todo.append(i)
    failed: list[str] = []
    with progress.bar(len(jobs), description, enabled=progress_bar) as bar:
        bar.update(len(jobs) - len(todo), reused=len(jobs) - len(todo))
        for k, outcome in _backend(backend, [jobs[i] for i in todo], workers, address):
            i = todo[k]
            if isinstance(outcome, Failed):  # Ray: reported at the end, the sweep goes on
                failed.append(f"{jobs[i].label!r}: {outcome.error}")
                bar.update(1, failed=len(failed), last=jobs[i].label)
                continue
            out[i] = _save(store, jobs[i], outcome)  # stored as it finishes: a killed sweep keeps it
            bar.update(1, last=jobs[i].label)
    if failed:
        raise GradDoctorError(f"{len(failed)} of {len(jobs)} runs failed ({len(jobs) - len(failed)} finished and "
                              f"stored; fix the cause and --resume runs only the rest): {'; '.join(failed)}")
    return [r for r in out if r is not None]
