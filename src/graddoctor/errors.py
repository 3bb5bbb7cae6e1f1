"""The library's one exception type."""
from __future__ import annotations

from collections.abc import Iterable


class GradDoctorError(ValueError):
    """Raised for every user-facing error; the message names the input and the fix."""


def unknown(what: str, name: object, choices: Iterable[str]) -> GradDoctorError:
    """Build the standard error for a name that is not in a registry."""
    return GradDoctorError(f"unknown {what} {name!r}; choose one of: {', '.join(choices)}")


def require(module: str, extra: str) -> object:
    """Import an optional dependency, or fail with an install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise GradDoctorError(
            f"{module} is needed for this; install it with: pip install 'graddoctor[{extra}]'"
        ) from exc
