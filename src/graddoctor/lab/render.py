"""Show one experiment: a figure (panels chosen by the experiment), a table, the conclusion.

Panels are pure drawers over RunSummary numbers (the per-layer profiles and training curves
reuse report.figures); `write` saves NAME.png and NAME.md (table + conclusion + figure link).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import require
from ..report import figdata as fd
from ..report.figures import plot_curves, plot_depth_profile
from .api import LabResult
from .conclude import VANISH, ZERO_DECADES, acc, dec, outcome
from .summary import RunSummary

DPI = 100  # one PNG per experiment, 30-60 kB
PNG_COLOURS = 256  # palette PNG
PANEL_SIZE = (4.6, 3.6)  # inches per panel
COLOURS = 10  # matplotlib's default colour cycle
SMOOTH = 25  # steps in the running mean of the loss curves
CURVE_POINTS = 200  # points drawn per curve (keeps the PNG near 100 kB)
OUTCOME_COLOURS = {"trains": "tab:green", "stalls": "0.7", "vanishes": "tab:blue", "explodes": "tab:red"}


def _profiles(runs: list[RunSummary], trained: bool) -> list[fd.Profile]:
    return [fd.Profile(r.label, np.arange(1, len(r.profile_init) + 1),
                       r.profile_trained if trained else r.profile_init) for r in runs]


def plot_profiles(runs: list[RunSummary], axes) -> None:
    """Weight-gradient RMS by depth, at init and after training, every run overlaid."""
    for ax, trained in zip(axes, (False, True)):
        plot_depth_profile(_profiles(runs, trained), ax)
        for i, line in enumerate(ax.get_lines()):  # past the 10 cycle colours: dashed
            line.set_linestyle("-" if (i // COLOURS) % 2 == 0 else "--")
        ax.set_title("after training (median of the judged steps)" if trained else "at initialisation")
        ax.set_xlabel("layer (1 = first hidden; last = output layer)")
        ax.get_legend().remove()
    axes[-1].legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1))


def smooth(series: fd.Series, window: int = SMOOTH, points: int = CURVE_POINTS) -> fd.Series:
    """Running mean over `window` steps, thinned to at most `points` points."""
    k = max(1, min(window, len(series.y)))
    y = np.convolve(series.y, np.ones(k) / k, mode="valid") if len(series.y) else series.y
    x = series.x[k - 1:] if len(series.x) else series.x
    step = max(1, len(y) // points)
    return fd.Series(series.label, x[::step], y[::step])


def plot_loss(lab: LabResult, ax) -> None:
    """Training loss per step of every run (running mean)."""
    curves = [smooth(s) for s in fd.loss_curves({r.job.label: r.history for r in lab.results})]
    plot_curves(curves, ax, "training loss", f"Loss per step (mean of {SMOOTH})")
    ax.set_xlabel("step")


def _series(runs: list[RunSummary], across: str) -> dict[str, list[RunSummary]]:
    out: dict[str, list[RunSummary]] = {}
    for r in runs:
        key = ", ".join(v for k, v in r.coords.items() if k != across)
        out.setdefault(key, []).append(r)
    return out


def _shown(v: float) -> float:
    """nan for a ratio that only says 'the signal is exactly zero' (it would flatten the axis)."""
    return v if v >= ZERO_DECADES else math.nan


def plot_by_depth(runs: list[RunSummary], axes) -> None:
    """Gradient ratio (at init: solid, trained: dashed) and final accuracy against depth, per series."""
    for k, (label, rs) in enumerate(_series(runs, "depth").items()):
        rs = sorted(rs, key=lambda r: r.depth)
        d = [r.depth for r in rs]
        axes[0].plot(d, [_shown(r.decades_init) for r in rs], marker="o", color=f"C{k}", label=f"{label}, at init")
        axes[0].plot(d, [_shown(r.decades_trained) for r in rs], marker="x", ls="--", color=f"C{k}",
                     label=f"{label}, trained")
        axes[1].plot(d, [r.val_acc for r in rs], marker="o", color=f"C{k}", label=label)
    axes[0].axhspan(-VANISH, VANISH, color="tab:green", alpha=0.08, lw=0, label=f"within {VANISH:g} decades")
    axes[0].set_ylabel("log10 ‖δ₁‖ / ‖δ_L‖ (decades)")
    axes[0].set_title("Gradient ratio, first / last hidden layer")
    axes[1].set_ylabel("final validation accuracy")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("Accuracy")
    for ax in axes:
        ax.set_xlabel("hidden layers")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)


def plot_theory(runs: list[RunSummary], ax) -> None:
    """Measured gradient ratio at init against the mean-field prediction."""
    x = np.array([r.extra.get("predicted", math.nan) for r in runs])
    y = np.array([_shown(r.decades_init) for r in runs])
    ok = np.isfinite(x) & np.isfinite(y)
    lim = (min(x[ok].min(), y[ok].min()) - 2, max(x[ok].max(), y[ok].max()) + 2) if ok.any() else (-1, 1)
    ax.plot(lim, lim, color="0.6", lw=1, ls="--", label="measured = predicted")
    for r, xi, yi in zip(runs, x, y):
        if math.isfinite(xi) and math.isfinite(yi):
            ax.scatter([xi], [yi], s=25, zorder=3)
            ax.annotate(r.label, (xi, yi), fontsize=6.5, xytext=(4, -3), textcoords="offset points")
    ax.set_xlabel("mean-field prediction (decades)")
    ax.set_ylabel("measured at init (decades)")
    ax.set_title("log10 ‖δ₁‖ / ‖δ_L‖: theory vs measurement")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")


def plot_grid(runs: list[RunSummary], axes) -> None:
    """Outcome of every (learning rate, momentum) cell, one panel per network."""
    from matplotlib.patches import Patch, Rectangle

    for ax, (net, rs) in zip(axes, _by_coord(runs, "net").items()):
        lrs = sorted({r.extra["lr"] for r in rs})
        moms = sorted({r.extra["momentum"] for r in rs})
        for r in rs:
            i, j = lrs.index(r.extra["lr"]), moms.index(r.extra["momentum"])
            o = outcome(r)
            ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, color=OUTCOME_COLOURS[o], alpha=0.8))
            ax.text(i, j, f"{o}\nacc {acc(r.val_acc)}", ha="center", va="center", fontsize=7)
        ax.set_xlim(-0.5, len(lrs) - 0.5)
        ax.set_ylim(-0.5, len(moms) - 0.5)
        ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
        ax.set_yticks(range(len(moms)), [f"{v:g}" for v in moms])
        ax.set_xlabel("learning rate (SGD)")
        ax.set_ylabel("momentum")
        ax.set_title(f"{net}: outcome per step size")
    axes[-1].legend(handles=[Patch(color=c, label=o) for o, c in OUTCOME_COLOURS.items()], fontsize=7,
                    loc="upper left", bbox_to_anchor=(1.01, 1))


def _by_coord(runs: list[RunSummary], axis: str) -> dict[str, list[RunSummary]]:
    out: dict[str, list[RunSummary]] = {}
    for r in runs:
        out.setdefault(r.coords.get(axis, ""), []).append(r)
    return out


def plot_top_layer(runs: list[RunSummary], axes) -> None:
    """Mean output of every hidden layer over training, one panel per run (Glorot & Bengio's fig. 2)."""
    from matplotlib.ticker import MaxNLocator

    lo = min(float(np.nanmin(r.act_means)) for r in runs)
    hi = max(float(np.nanmax(r.act_means)) for r in runs)
    for ax, r in zip(axes, runs):
        ax.set_ylim(lo - 0.05, hi + 0.05)  # one scale: the panels compare
        for j in range(r.act_means.shape[1]):
            ax.plot(r.steps, r.act_means[:, j], lw=1.2, label=f"layer {j + 1}" + (" (top)" if j == r.act_means.shape[1] - 1 else ""))
        ax.set_title(f"{r.label}: mean output per layer", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel("step")
        ax.set_ylabel("mean output")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)


# panel name -> axes it takes: a number, "net" (one per network) or "runs" (one per run)
PANELS: dict[str, int | str] = {
    "profiles": 2, "loss": 1, "by_depth": 2, "theory": 1, "grid": "net", "top_layer": "runs",
}


def _n_axes(kind: int | str, lab: LabResult) -> int:
    if kind == "net":
        return len(_by_coord(lab.summaries, "net"))
    if kind == "runs":
        return len(lab.summaries)
    return int(kind)


def build_figure(lab: LabResult):
    """The experiment's figure: its panels side by side (wrapped at 3 per row)."""
    figure = require("matplotlib.figure", "report")
    counts = [_n_axes(PANELS[p], lab) for p in lab.experiment.figures]
    total = sum(counts)
    rows = math.ceil(total / 3)  # at most 3 panels per row, rows filled evenly
    cols = math.ceil(total / rows)
    fig = figure.Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), dpi=DPI, layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(rows, cols)).ravel())
    for ax in axes[total:]:
        ax.set_visible(False)
    i = 0
    for panel, n in zip(lab.experiment.figures, counts):
        mine, i = axes[i:i + n], i + n
        {"profiles": lambda: plot_profiles(lab.summaries, mine), "loss": lambda: plot_loss(lab, mine[0]),
         "by_depth": lambda: plot_by_depth(lab.summaries, mine), "theory": lambda: plot_theory(lab.summaries, mine[0]),
         "grid": lambda: plot_grid(lab.summaries, mine), "top_layer": lambda: plot_top_layer(lab.summaries, mine),
         }[panel]()
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
    plot_profiles(runs, fig.subplots(1, 2))
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
