"""Grids of runs: a Job is one network + training settings; `expand` makes the cartesian grid.

An axis is a list of (label, overrides) points; an override names a NetSpec or TrainConfig
field, and a callable value is computed from the other fields of its point (e.g. a residual
branch scale of 1/sqrt(blocks), which depends on the depth).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

from ..errors import GradDoctorError
from ..nets import NetSpec
from ..training import TrainConfig

SPEC_FIELDS = frozenset(f.name for f in fields(NetSpec)) - {"extra"}
CONFIG_FIELDS = frozenset(f.name for f in fields(TrainConfig))
# Probed steps per run (besides step 0, the network as built): the diagnosis judges the last
# half and needs at least 3 (diagnose.thresholds.MIN_STEPS); more only costs probe time.
RECORDS = 24

Point = tuple[str, dict]  # (label, {field: value or callable(fields) -> value})
Axis = tuple[str, Sequence[Point]]  # (axis name, points)


@dataclass(frozen=True)
class Job:
    """One run of a grid: the network, how to train it, the data, and where it belongs."""

    spec: NetSpec
    config: TrainConfig
    data: str = "digits"  # a name from graddoctor.data.DATASETS
    records: int = RECORDS  # probed steps after step 0 (every = total steps // records)
    group: str = "sweep"  # the experiment's name, or 'sweep'
    coords: tuple[tuple[str, str], ...] = ()  # (axis, point label) for each axis of the grid

    @property
    def label(self) -> str:
        """'sigmoid, depth 20': the point labels joined."""
        return ", ".join(v for _, v in self.coords) or self.spec.summary()

    def coord(self, axis: str) -> str:
        """This job's point label on one axis."""
        return dict(self.coords)[axis]

    def key(self) -> str:
        """A digest of everything that determines the result (what --resume matches on)."""
        what = {"spec": self.spec.to_dict(), "config": self.config.to_dict(), "data": self.data,
                "records": self.records, "group": self.group}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    def run(self):
        """Build, train under the probe and diagnose: (Trace, History, Diagnosis | None); no I/O."""
        from .runner import execute

        return execute(self)

    def spec_dict(self) -> dict:
        """The stored run's spec column."""
        return self.spec.to_dict()

    def stored_config(self) -> dict:
        """The config column of the stored run: TrainConfig plus the grid bookkeeping."""
        return {**self.config.to_dict(), "data": self.data, "records": self.records, "group": self.group,
                "label": self.label, "coords": [list(c) for c in self.coords], "key": self.key()}


def total_steps(config: TrainConfig, n_train: int) -> int:
    """Optimizer steps a TrainConfig takes on n_train samples."""
    return config.max_steps or config.epochs * math.ceil(n_train / config.batch_size)


def probe_every(config: TrainConfig, n_train: int, records: int) -> int:
    """Record every k-th step so that about `records` steps are probed."""
    return max(1, total_steps(config, n_train) // max(1, records))


def _resolve(point: dict) -> dict:
    """Evaluate callable values on the point's plain (non-callable) values."""
    plain = {k: v for k, v in point.items() if not callable(v)}
    for k, v in point.items():
        if callable(v):
            plain[k] = v(plain)
    return plain


def expand(spec: dict, config: dict, axes: Sequence[Axis], data: str = "digits", group: str = "sweep",
           records: int = RECORDS, in_shape: tuple[int, ...] = (64,), out_features: int = 10) -> list[Job]:
    """The cartesian grid of `axes` over base NetSpec and TrainConfig fields, as Jobs."""
    for name, points in axes:
        if not points:
            raise GradDoctorError(f"grid axis {name!r} has no values; give at least one")
        for _, over in points:
            bad = set(over) - SPEC_FIELDS - CONFIG_FIELDS
            if bad:
                raise GradDoctorError(f"axis {name!r} sets unknown field(s) {', '.join(map(repr, sorted(bad)))}; "
                                      "choose NetSpec or TrainConfig fields: "
                                      f"{', '.join(sorted(SPEC_FIELDS | CONFIG_FIELDS))}")
    jobs = []
    for combo in itertools.product(*(points for _, points in axes)):
        point = {"in_shape": in_shape, "out_features": out_features, **spec, **config}
        for _, over in combo:
            point.update(over)
        point = _resolve(point)
        jobs.append(Job(NetSpec(**{k: v for k, v in point.items() if k in SPEC_FIELDS}),
                        TrainConfig(**{k: v for k, v in point.items() if k in CONFIG_FIELDS}),
                        data, records, group, tuple((a, lab) for (a, _), (lab, _) in zip(axes, combo))))
    return jobs


def axis(name: str, field: str, values: Sequence, fmt: Callable[[object], str] = str) -> Axis:
    """An axis that sets one field: axis('depth', 'depth', [5, 10]) -> labels '5', '10'."""
    return name, [(fmt(v), {field: v}) for v in values]
