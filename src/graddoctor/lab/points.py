"""Pure: runs over several seeds -> grid points, and the text of a number measured on each seed.

A Point is one grid point (one set of coordinates) with its runs, one per seed. Tables show a
number as its range over the seeds ("-12.1…-11.8"; one value when every seed shows the same
digits) and a verdict with how many seeds gave it ("vanishing ×2; healthy ×1").
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .summary import RunSummary

# The diagnosis floors an exactly-zero signal at 1e-300 (diagnose.signals): a ratio below this
# many decades means the first layer's error signal is 0 (e.g. tanh saturated in float64).
ZERO_DECADES = -250.0


def dec(v: float) -> str:
    """Decades with a sign: '+1.4', '-12.0', 'zero' (the first layer's signal is exactly 0), 'n/a'."""
    if not math.isfinite(v):
        return "n/a"
    return "zero" if v < ZERO_DECADES else f"{v:+.1f}"


def acc(v: float) -> str:
    """An accuracy, or 'n/a'."""
    return f"{v:.2f}" if math.isfinite(v) else "n/a"


@dataclass
class Point:
    """One grid point measured on several seeds."""

    label: str
    coords: dict[str, str]
    runs: list[RunSummary]  # one per seed, in seed order

    def get(self, what: str | Callable[[RunSummary], float]) -> np.ndarray:
        """One number per seed: an attribute name, or a function of the run."""
        f = what if callable(what) else (lambda r: getattr(r, what))
        return np.array([f(r) for r in self.runs], float)

    @property
    def depth(self) -> int:
        """Hidden layers (the same on every seed)."""
        return self.runs[0].depth


def points(runs: Iterable[RunSummary]) -> list[Point]:
    """The runs grouped by grid point, in the order the points first appear."""
    out: dict[tuple, Point] = {}
    for r in runs:
        key = (r.label, tuple(sorted(r.coords.items())))
        if key not in out:
            out[key] = Point(r.label, dict(r.coords), [])
        out[key].runs.append(r)
    for p in out.values():
        p.runs.sort(key=lambda r: r.seed)
    return list(out.values())


def by_seed(runs: Iterable[RunSummary]) -> dict[int, list[RunSummary]]:
    """Seed -> that seed's runs, seeds in increasing order."""
    out: dict[int, list[RunSummary]] = {}
    for r in runs:
        out.setdefault(r.seed, []).append(r)
    return dict(sorted(out.items()))


def by(runs: Iterable, **coords: str) -> list:
    """The runs (or points) at these grid coordinates."""
    return [r for r in runs if all(r.coords.get(k) == v for k, v in coords.items())]


def one(runs: Iterable, **coords: str):
    """The first run (or point) at these coordinates, or None."""
    found = by(runs, **coords)
    return found[0] if found else None


def values(runs: Iterable, axis: str) -> list[str]:
    """The point labels on one axis, in grid order."""
    return list(dict.fromkeys(r.coords[axis] for r in runs if axis in r.coords))


def span(xs: Sequence[float] | np.ndarray, fmt: Callable[[float], str] = dec) -> str:
    """'lo…hi' over the seeds as `fmt` writes them, or one value when they all read the same."""
    xs = [float(x) for x in xs]
    finite = sorted(x for x in xs if math.isfinite(x))
    shown = [fmt(x) for x in finite] + [fmt(x) for x in xs if not math.isfinite(x)]
    if len(set(shown)) == 1:
        return shown[0]
    if not finite:
        return "n/a"
    lo, hi = fmt(finite[0]), fmt(finite[-1])
    text = lo if lo == hi else f"{lo}…{hi}"
    missing = len(xs) - len(finite)
    return text + (f" (n/a ×{missing})" if missing else "")


def counts(labels: Sequence[str]) -> str:
    """'healthy' when every seed says it; else each label with its count, most frequent first ('; ')."""
    seen: dict[str, int] = {}
    for s in labels:
        seen[s] = seen.get(s, 0) + 1
    if len(seen) == 1:
        return labels[0]
    return "; ".join(f"{s} ×{n}" for s, n in sorted(seen.items(), key=lambda kv: -kv[1]))


def seeds_text(seeds: Sequence[int]) -> str:
    """'seed 1' or 'seeds 0, 2'."""
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


SPREAD_NOTE = ("A number is its range over the seeds (min…max; one value when every seed shows the same "
               "digits); a verdict is followed by how many seeds gave it when they differ.")


def page(name: str, title: str, intro: str, head: Sequence[str], rows: Sequence[Sequence[str]],
         conclusion: str) -> str:
    """An experiment as Markdown: title, intro, table, conclusion (a results file: docs/lab.md includes it
    with `--8<-- "lab/NAME.md"` and places the figure, NAME.png, itself)."""
    lines = [f"### `{name}`: {title}", "", intro, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join([*lines, "", conclusion, ""])


def summary_page(entries: Sequence[tuple[str, str, bool, int, int, int, int, float]], quick: bool) -> str:
    """The `lab run all` overview as Markdown: per experiment (name, claim, holds, seeds the claim held on,
    seeds, runs, reused, training seconds) one row with a link to its section (docs/lab.md's `lab-NAME`
    anchors)."""
    lines = ["| experiment | claim | verdict | runs | training time |", "|---|---|---|---|---|"]
    for name, claim, holds, held, seeds, runs, reused, seconds in entries:
        verdict = f"**supported on {held}/{seeds} seeds**" if holds else f"not supported (held on {held}/{seeds} seeds)"
        lines.append(f"| [`{name}`](#lab-{name}) | {claim.replace('|', '/')} | {verdict} | {runs}"
                     + (f" ({reused} read back)" if reused else "") + f" | {seconds:.0f} s |")
    total = sum(e[7] for e in entries)
    lines += ["", f"`graddoctor lab run all{' --quick' if quick else ''}`: {sum(e[5] for e in entries)} runs, "
              f"{total / 60:.1f} min of training in all (the runs' own wall times as stored, also for runs read "
              "back with --resume; one thread each, on a shared machine).", ""]
    return "\n".join(lines)


def bullets(lines: Sequence[str]) -> str:
    """A Markdown list."""
    return "".join(f"- {line}\n" for line in lines)
