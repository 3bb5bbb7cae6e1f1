"""The Ray backend of the runner: each run one Ray task, on a cluster or a local Ray instance.

`runs(jobs, address)` has the local backend's shape (runner.local): it yields (index, outcome)
as tasks finish, and the runner stores each at once in the local RunStore (only this process
writes it). Unlike the local pool, a failed task does not stop the others, which are already
running on the cluster: it is yielded as `Failed(error)`, and the runner reports every failure
at the end, after storing the runs that finished (`--resume` then reruns only the failed ones).

Each task asks Ray for the job's `resources` (a Runnable may declare them, e.g. {"num_cpus": 2,
"num_gpus": 1}; default one CPU, as the bench trains on one thread) and runs torch with that many
threads. `address=None` starts a local Ray instance (with `max_in_flight` CPUs if given) and
shuts it down at the end; an address ("ray://head:10001", "head:6379", "auto") connects to an
existing cluster, whose nodes need graddoctor installed (the same version as here). A Ray
instance the caller already started (ray.init) is used as it is.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import GradDoctorError, require

RESOURCES = {"num_cpus": 1, "num_gpus": 0}  # a task's default request: the bench trains on one thread


@dataclass(frozen=True)
class Failed:
    """A run whose task raised (or whose worker died): the error, in one line."""

    error: str


def _task(job, threads: int):
    """One run inside a Ray worker: torch with the CPUs Ray gave the task."""
    import torch

    torch.set_num_threads(max(1, threads))
    return job.run()


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)  # RayTaskError: the exception the task raised
    if cause is not None:
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def connect(address: str | None, cpus: int | None = None) -> bool:
    """Make sure Ray runs here (connect to `address`, or start a local instance); True if this call started it."""
    ray = require("ray", "ray")
    if ray.is_initialized():
        return False
    try:
        if address is None:
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "a local Ray instance" if address is None else f"the Ray cluster at {address!r}"
        raise GradDoctorError(f"could not start or reach {where}: {_one_line(exc)}; check the address "
                              "(`ray status` on the head node prints it) or leave --address out for a local "
                              "instance") from None
    return True


@contextmanager
def session(address: str | None = None, cpus: int | None = None) -> Iterator[None]:
    """Ray for the duration of a block (several sweeps share one local instance); see connect()."""
    started = connect(address, cpus)
    try:
        yield
    finally:
        if started:
            require("ray", "ray").shutdown()


def runs(jobs: Sequence, address: str | None = None, max_in_flight: int | None = None) -> Iterator[tuple[int, object]]:
    """(index, outcome or Failed) of each job as its Ray task finishes; at most `max_in_flight` at a time."""
    ray = require("ray", "ray")
    with session(address, max_in_flight):
        yield from _submit(ray, jobs, max_in_flight)


def _submit(ray, jobs: Sequence, max_in_flight: int | None) -> Iterator[tuple[int, object]]:
    pending: dict = {}  # ObjectRef -> job index
    try:
        remote = ray.remote(_task)
        queue = list(range(len(jobs)))
        while queue or pending:
            while queue and (max_in_flight is None or len(pending) < max_in_flight):
                i = queue.pop(0)
                want = {**RESOURCES, **(getattr(jobs[i], "resources", None) or {})}
                threads = int(want.get("num_cpus") or 1)
                pending[remote.options(**want).remote(jobs[i], threads)] = i
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
            except ray.exceptions.RayError as exc:  # the task raised, or its worker or node died
                outcome = Failed(_one_line(exc))
            yield i, outcome
    finally:
        for ref in pending:  # stopped early (e.g. the store could not be written): free the cluster
            ray.cancel(ref)
