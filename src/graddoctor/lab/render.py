"""Show one experiment: a figure (the panels it names, drawn by panels.py), a table, the conclusion.

`write` saves NAME.png and NAME.md (claim, table, conclusion, figure link); `write_profiles`
saves a sweep's overlay of per-layer gradients.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import require
from . import panels as P
from .api import LabResult
from .points import SPREAD_NOTE, acc, counts, page, points, span
from .summary import RunSummary

DPI = 100  # one PNG per experiment, 20-50 kB
PNG_COLOURS = 256  # palette PNG
PANEL_SIZE = (4.6, 3.6)  # inches per panel


def first_seed(lab: LabResult) -> list[int]:
    """Positions of the runs of the first seed (the panels that draw one curve per run show only those)."""
    seed = min(s.seed for s in lab.summaries)
    return [i for i, s in enumerate(lab.summaries) if s.seed == seed]


def _one_seed(lab: LabResult) -> list[RunSummary]:
    return [lab.summaries[i] for i in first_seed(lab)]


# panel name -> (axes it takes: a number, "net" = one per network, "runs" = one per grid point; drawer).
# Curves per run (profiles, loss, top layer) show the first seed; the others show every seed.
PANELS: dict[str, tuple[int | str, Callable]] = {
    "profiles": (2, lambda lab, axes: P.plot_profiles(_one_seed(lab), axes)),
    "loss": (1, lambda lab, axes: P.plot_loss({lab.results[i].job.label: lab.results[i].history
                                               for i in first_seed(lab)}, axes[0])),
    "by_depth": (2, lambda lab, axes: P.plot_by_depth(lab.summaries, axes)),
    "theory": (1, lambda lab, axes: P.plot_theory(lab.summaries, axes[0])),
    "grid": ("net", lambda lab, axes: P.plot_grid(lab.summaries, axes)),
    "top_layer": ("runs", lambda lab, axes: P.plot_top_layer(_one_seed(lab), axes)),
}
SEEDED = {"profiles", "loss", "top_layer"}  # panels that draw the first seed only


def _n_axes(kind: int | str, lab: LabResult) -> int:
    if kind == "net":
        return len({s.coords.get("net") for s in lab.summaries})
    if kind == "runs":
        return len(first_seed(lab))
    return int(kind)


def build_figure(lab: LabResult):
    """The experiment's figure: its panels side by side (at most 3 per row, rows filled evenly)."""
    figure = require("matplotlib.figure", "report")
    counts = [_n_axes(PANELS[p][0], lab) for p in lab.experiment.figures]
    total = sum(counts)
    rows = math.ceil(total / 3)
    cols = math.ceil(total / rows)
    fig = figure.Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), dpi=DPI, layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(rows, cols)).ravel())
    for ax in axes[total:]:
        ax.set_visible(False)
    start = 0
    for panel, n in zip(lab.experiment.figures, counts):
        PANELS[panel][1](lab, axes[start:start + n])
        start += n
    seeds = sorted({s.seed for s in lab.summaries})
    note = f"seeds {', '.join(map(str, seeds))}"
    if SEEDED & set(lab.experiment.figures):
        note += f"; curves per run: seed {seeds[0]}"
    fig.suptitle(f"lab: {lab.experiment.name}" + (" (quick)" if lab.quick else "") + f" ({note})", fontsize=11)
    return fig


def theory_column(lab: LabResult) -> list[str] | None:
    """The theory's prediction per grid point (range over seeds), or None when it covers none of the runs."""
    if not lab.experiment.theory:
        return None
    pts = points(lab.summaries)
    if not any(math.isfinite(r.extra.get("predicted", math.nan)) for p in pts for r in p.runs):
        return None
    return [span(p.get(lambda r: r.extra.get("predicted", math.nan))) for p in pts]


def table(lab: LabResult) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: one row per grid point, each number as its range over the seeds."""
    head = ["run", "at init", "after training", "decades at init", "decades trained", "val acc"]
    extra = dict(lab.conclusion.columns)
    theory = theory_column(lab)
    if theory is not None:
        extra = {"theory (decades)": theory, **extra}
    rows = [[p.label, counts([r.verdict_init for r in p.runs]), counts([r.verdict_trained for r in p.runs]),
             span(p.get("decades_init")), span(p.get("decades_trained")), span(p.get("val_acc"), acc)]
            + [cells[i] for cells in extra.values()] for i, p in enumerate(points(lab.summaries))]
    return head + list(extra), rows


def markdown(lab: LabResult) -> str:
    """The experiment as Markdown: claim, source, table, conclusion (the figure is NAME.png beside it)."""
    e = lab.experiment
    size = e.quick if lab.quick else e.full
    seeds = sorted({s.seed for s in lab.summaries})
    head, rows = table(lab)
    intro = (f"*{e.source}.* `graddoctor lab run {e.name}{' --quick' if lab.quick else ''}`: {len(rows)} grid points "
             f"× {len(seeds)} seeds ({', '.join(map(str, seeds))}), width {size.width}, {size.steps} steps each, "
             f"digits. {SPREAD_NOTE}")
    return page(e.name, e.claim, intro, head, rows, lab.conclusion.text)


def save_png(fig, path: Path) -> Path:
    """Write a figure as a 256-colour PNG (line plots lose nothing visible; a third of the bytes)."""
    import io

    image = require("PIL.Image", "report")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    image.open(buf).convert("RGB").quantize(PNG_COLOURS).save(path, format="png", optimize=True)
    return path


def write_profiles(runs: list[RunSummary], out_dir: str | Path, name: str = "sweep") -> Path:
    """Save OUT/NAME.png: the per-layer gradients of every run, at init and after training."""
    figure = require("matplotlib.figure", "report")
    fig = figure.Figure(figsize=(2 * PANEL_SIZE[0] + 1, PANEL_SIZE[1] + 0.4), dpi=DPI, layout="constrained")
    P.plot_profiles(runs, fig.subplots(1, 2))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return save_png(fig, out / f"{name}.png")


def write(lab: LabResult, out_dir: str | Path) -> list[Path]:
    """Save OUT/NAME.png and OUT/NAME.md; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png, md = out / f"{lab.experiment.name}.png", out / f"{lab.experiment.name}.md"
    save_png(build_figure(lab), png)
    md.write_text(markdown(lab))
    return [png, md]
