"""Where a probe's trace also goes while it records: sinks, given to watch(..., sinks=[...]).

A sink is any object with `write_new(trace)` (called after new steps reach the Trace: write
the rows it has not written yet) and `close()`. The probe knows nothing else about them and
never imports report/ or the store: named shorthands such as `watch(tensorboard=DIR)` are
resolved here by module path, when asked for.
"""
from __future__ import annotations

import importlib
from typing import Protocol

from ..errors import GradDoctorError

# shorthand keyword -> (module, factory): factory(argument) -> a sink
NAMED: dict[str, tuple[str, str]] = {
    "tensorboard": ("graddoctor.report.tensorboard", "TraceWriter"),
}


class Sink(Protocol):
    """What the probe writes to."""

    def write_new(self, trace) -> None:
        """Write the rows of `trace` not written yet."""

    def close(self) -> None:
        """Flush and release."""


def named(kind: str, argument: object) -> Sink:
    """The sink a shorthand stands for (e.g. named("tensorboard", DIR))."""
    module, factory = NAMED[kind]
    return getattr(importlib.import_module(module), factory)(argument)


def check(sinks: list) -> list:
    """The sinks, each checked for the two methods (a clear error otherwise)."""
    for s in sinks:
        if not (callable(getattr(s, "write_new", None)) and callable(getattr(s, "close", None))):
            raise GradDoctorError(f"sinks: {type(s).__name__} is not a sink; a sink has write_new(trace) and "
                                  "close() (e.g. graddoctor.report.tensorboard.TraceWriter(DIR))")
    return list(sinks)
