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
from .conclude import acc, dec
from .summary import RunSummary

DPI = 100  # one PNG per experiment, 20-50 kB
PNG_COLOURS = 256  # palette PNG
PANEL_SIZE = (4.6, 3.6)  # inches per panel


# panel name -> (axes it takes: a number, "net" = one per network, "runs" = one per run; drawer)
PANELS: dict[str, tuple[int | str, Callable]] = {
    "profiles": (2, lambda lab, axes: P.plot_profiles(lab.summaries, axes)),
    "loss": (1, lambda lab, axes: P.plot_loss({r.job.label: r.history for r in lab.results}, axes[0])),
    "by_depth": (2, lambda lab, axes: P.plot_by_depth(lab.summaries, axes)),
    "theory": (1, lambda lab, axes: P.plot_theory(lab.summaries, axes[0])),
    "grid": ("net", lambda lab, axes: P.plot_grid(lab.summaries, axes)),
    "top_layer": ("runs", lambda lab, axes: P.plot_top_layer(lab.summaries, axes)),
}


def _n_axes(kind: int | str, lab: LabResult) -> int:
    if kind == "net":
        return len({s.coords.get("net") for s in lab.summaries})
    if kind == "runs":
        return len(lab.summaries)
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
    fig.suptitle(f"lab: {lab.experiment.name}" + (" (quick)" if lab.quick else ""), fontsize=11)
    return fig


def table(lab: LabResult) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: one row per run, the measured numbers as text."""
    head = ["run", "at init", "after training", "decades at init", "decades trained", "val acc"]
    extra = lab.conclusion.columns
    rows = [[r.label, r.verdict_init, r.verdict_trained, dec(r.decades_init), dec(r.decades_trained), acc(r.val_acc)]
            + [cells[i] for cells in extra.values()] for i, r in enumerate(lab.summaries)]
    return head + list(extra), rows


def markdown(lab: LabResult, figure: str | None = None) -> str:
    """The experiment as Markdown: claim, source, table, conclusion, figure link."""
    e = lab.experiment
    head, rows = table(lab)
    size = e.quick if lab.quick else e.full
    lines = [f"### `{e.name}`: {e.claim}", "",
             f"*{e.source}.* `graddoctor lab run {e.name}{' --quick' if lab.quick else ''}`: "
             f"{len(rows)} runs, width {size.width}, {size.steps} steps each, digits.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    lines += ["", lab.conclusion.text, ""]
    if figure:
        lines += [f"![{e.name}]({figure})", ""]
    return "\n".join(lines)


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
    md.write_text(markdown(lab, png.name))
    return [png, md]
