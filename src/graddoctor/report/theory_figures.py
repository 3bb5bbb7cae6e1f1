"""Theory figures: phase diagram, residual and BatchNorm pictures, predicted-vs-measured ratios.

Pure `plot_*(data, ax)` drawers over numbers from graddoctor.theory; `write_figure` saves a
PNG or SVG. matplotlib is imported where used (Figure objects, Agg renderer, no pyplot).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import GradDoctorError, require

DPI = 85  # the README's two-panel PNG (1100 x 540 px) stays ~100 kB
FORMATS = (".png", ".svg")
TARGET_DECADES = 0.2  # the accuracy target of issue 7, drawn as a band around y = x
MARKERS = {"small": "v", "xavier_normal": "o", "he_normal": "s"}  # others: "D"


def _merge_points(points: dict[str, tuple[float, float]]) -> dict[tuple[float, float], list[str]]:
    """Inits with the same (sigma_w^2, sigma_b^2) share one mark: ['xavier', 'lecun']."""
    merged: dict[tuple[float, float], list[str]] = {}
    for name, xy in points.items():
        short = name.removesuffix("_normal").removesuffix("_uniform")
        names = merged.setdefault((round(xy[0], 9), round(xy[1], 9)), [])
        if short not in names:
            names.append(short)
    return merged


def plot_phase_diagram(diagram: dict, ax, inits: dict[str, tuple[float, float]] | None = None,
                       config: tuple[str, float, float] | None = None) -> None:
    """log10 chi_1 over (sigma_w^2, sigma_b^2), the chi_1 = 1 line, init marks, a starred config."""
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.ticker import MaxNLocator

    sw2, sb2 = diagram["sigma_w2"], diagram["sigma_b2"]
    with np.errstate(divide="ignore"):
        lc = np.log10(diagram["chi1"])
    fin = lc[np.isfinite(lc)]
    lo, hi = min(float(fin.min()), -0.1), max(float(fin.max()), 0.1)  # 0 (chi_1 = 1) stays white
    # filled contours, ~0.1 decades apart, with chi_1 = 1 (white) as a level boundary
    levels = np.unique(np.concatenate([np.linspace(lo, 0.0, 17), np.linspace(0.0, hi, 9)]))
    mesh = ax.contourf(sw2, sb2, np.clip(lc, lo, hi), levels=levels, cmap=colormaps["RdBu_r"],
                       norm=TwoSlopeNorm(0.0, lo, hi))
    ticks = [t for a, b in ((lo, 0.0), (0.0, hi)) for t in MaxNLocator(4).tick_values(a, b)
             if a <= t <= b and (t != 0.0 or a == 0.0)]  # each half of the diverging scale
    ax.figure.colorbar(mesh, ax=ax, ticks=ticks, label=r"$\log_{10}\chi_1$  (gradient gain per layer)")
    if (fin < 0).any() and (fin > 0).any():  # the chi_1 = 1 line exists in this range
        ax.contour(sw2, sb2, lc, levels=[0.0], colors="black", linewidths=1.5)
    ax.set_xscale("log")
    ax.set_xlim(sw2.min(), sw2.max())
    ax.set_ylim(sb2.min(), sb2.max())
    if (fin < 0).any():
        ax.text(0.03, 0.55, "ordered\n(gradients vanish)", transform=ax.transAxes, color="navy")
    if (fin > 0).any():
        ax.text(0.97, 0.55, "chaotic\n(gradients explode)", transform=ax.transAxes, ha="right",
                color="darkred")
    _mark(ax, inits or {}, (sw2.min(), sw2.max()))
    if config is not None:
        inside = sw2.min() <= config[1] <= sw2.max() and sb2.min() <= config[2] <= sb2.max()
        ax.plot([config[1]] if inside else [], [config[2]] if inside else [], marker="*", ms=14,
                color="gold", mec="black", zorder=5, clip_on=False,
                label=config[0] if inside else f"{config[0]}: ({config[1]:.3g}, {config[2]:.3g}), off the plot")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel(r"$\sigma_w^2$ = Var(w) $\times$ fan-in")
    ax.set_ylabel(r"$\sigma_b^2$ = Var(b)")
    both = (fin < 0).any() and (fin > 0).any()
    ax.set_title(f"{diagram['activation']}: " + ("order-to-chaos line $\\chi_1 = 1$ (black)" if both
                                                 else "no order-to-chaos line in this range"))


def _mark(ax, inits: dict[str, tuple[float, float]], xlim: tuple[float, float]) -> None:
    """White dots for the inits; those beyond the sigma_w^2 range as text at that edge."""
    off = {"left": [], "right": []}
    for (x, y), names in _merge_points(inits).items():
        label = ", ".join(names)
        if not xlim[0] <= x <= xlim[1]:
            off["left" if x < xlim[0] else "right"].append(f"{label} ($\\sigma_w^2$={x:.3g})")
            continue
        ax.plot([x], [y], marker="o", ms=5, color="black", mfc="white", clip_on=False, zorder=4)
        ax.annotate(label, (x, y), xytext=(3, 6), textcoords="offset points", rotation=60, fontsize=7)
    for side, labels in off.items():
        if labels:
            left = side == "left"
            ax.text(0.01 if left else 0.99, 0.3, "\n".join(("← " if left else "") + t + ("" if left else " →")
                                                         for t in labels),
                    transform=ax.transAxes, ha=side, fontsize=7)


def plot_predicted_vs_measured(rows: list[dict], ax) -> None:
    """Measured (mean +- std over seeds) against predicted log10 ||delta_1||^2/||delta_L||^2.

    rows: dicts with activation, init, depth, predicted, measured, std (benchmarks/theory.py).
    """
    if not rows:
        raise GradDoctorError("no configurations to plot: give at least one predicted/measured row")
    pred = np.array([r["predicted"] for r in rows])
    lo, hi = float(min(pred.min(), min(r["measured"] for r in rows))), float(pred.max())
    line = np.array([lo - 5, hi + 5])
    ax.plot(line, line, color="black", lw=0.8, label="measured = predicted")
    ax.fill_between(line, line - TARGET_DECADES, line + TARGET_DECADES, color="grey", alpha=0.3,
                    label=f"$\\pm${TARGET_DECADES} decades")
    colours = {}
    for r in rows:
        c = colours.setdefault(r["activation"], f"C{len(colours)}")
        ax.errorbar(r["predicted"], r["measured"], yerr=r.get("std", 0.0), fmt=MARKERS.get(r["init"], "D"),
                    color=c, ms=5, capsize=2, mfc="none")
    for act, c in colours.items():
        ax.plot([], [], "o", color=c, mfc="none", label=act)
    for init, m in MARKERS.items():
        if any(r["init"] == init for r in rows):
            ax.plot([], [], m, color="grey", mfc="none", label=init)
    ax.set_xlim(lo - 5, hi + 5)
    ax.set_ylim(lo - 5, hi + 5)
    ax.set_xlabel(r"predicted $\log_{10}\|\delta_1\|^2/\|\delta_L\|^2$ (mean-field, $\prod_l \chi(q_l)$)")
    ax.set_ylabel("measured (mean ± std over seeds)")
    worst = max(abs(r["measured"] - r["predicted"]) for r in rows)
    ax.set_title(f"{len(rows)} random MLPs at init: worst |error| {worst:.2f} decades")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")


def plot_prediction_errors(rows: list[dict], ax) -> None:
    """measured - predicted (decades) per configuration, with the +-0.2 target band."""
    x = np.arange(len(rows))
    err = np.array([r["measured"] - r["predicted"] for r in rows])
    ax.axhspan(-TARGET_DECADES, TARGET_DECADES, color="grey", alpha=0.3)
    ax.axhline(0.0, color="black", lw=0.8)
    colours: dict[str, str] = {}
    for i, r in enumerate(rows):
        c = colours.setdefault(r["activation"], f"C{len(colours)}")
        ax.errorbar(i, err[i], yerr=r.get("std", 0.0), fmt=MARKERS.get(r["init"], "D"), color=c,
                    ms=5, capsize=2, mfc="none")
    ax.set_xticks(x, [f"{r['activation'][:4]} {r['init'][:6]} {r['depth']}" for r in rows],
                  rotation=90, fontsize=6)
    ax.set_ylabel("measured − predicted\n(decades)")


def plot_residual_picture(data: dict, ax) -> None:
    """Predicted log10 ||delta_1||^2/||delta_L||^2 against depth, one line per branch scale."""
    for i, (label, values) in enumerate(data["curves"].items()):
        ax.plot(data["depths"], values, color=f"C{i}", lw=1.5, label=label)
        ax.plot(data["depths"], data["wide"][label], color=f"C{i}", lw=1, ls=":")
    ax.plot([], [], color="grey", lw=1, ls=":", label="wide-network limit")
    ax.axhspan(-1, 1, color="grey", alpha=0.2, label="within 10x")
    d, r = data["this"]
    ax.plot([d], [r], marker="*", ms=14, color="gold", mec="black", zorder=5, label="this net")
    ax.set_xlabel("depth (hidden layers)")
    ax.set_ylabel(r"predicted $\log_{10}\|\delta_1\|^2/\|\delta_L\|^2$")
    ax.set_title(f"residual: {data['spec'].split(',')[0]}, branch scale a")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


def plot_batchnorm_picture(data: dict, ax) -> None:
    """Per-layer gain of ||delta|| deep in a BN stack against batch size, both placements."""
    for i, (place, values) in enumerate(data["curves"].items()):
        ax.plot(data["batches"], values, "o-", color=f"C{i}", ms=4, label=f"BN {place.replace('_', ' ')}")
    ax.axhline(data["limit"], color="black", ls="--", lw=0.8,
               label=f"large batch (before): {data['limit']:.3f}")
    ax.axhline(1.0, color="grey", lw=0.8)
    place, b, g = data["this"]
    ax.plot([b], [g], marker="*", ms=14, color="gold", mec="black", zorder=5, label=f"this net ({g:.3f})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel(r"gain of $\|\delta\|$ per layer")
    ax.set_title(f"BatchNorm + {data['activation']}: the gradient grows towards the input")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def write_picture(path: str | Path, kind: str, data: dict) -> Path:
    """Save the residual ('residual') or BatchNorm ('batchnorm') picture as .png or .svg."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise GradDoctorError(f"figure file {str(path)!r} must end in .png or .svg")
    figure = require("matplotlib.figure", "report")
    fig = figure.Figure(figsize=(6.4, 4.8), dpi=DPI, layout="constrained")
    {"residual": plot_residual_picture, "batchnorm": plot_batchnorm_picture}[kind](data, fig.add_subplot())
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Date": None} if path.suffix.lower() == ".svg" else None)
    return path


def write_figure(path: str | Path, diagram: dict, inits: dict | None = None,
                 config: tuple[str, float, float] | None = None,
                 comparison: list[dict] | None = None) -> Path:
    """Save the phase diagram (and, given rows, predicted vs measured beside it) as .png or .svg."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise GradDoctorError(f"figure file {str(path)!r} must end in .png or .svg")
    figure = require("matplotlib.figure", "report")
    if not comparison:
        fig = figure.Figure(figsize=(6.4, 4.8), dpi=DPI, layout="constrained")
        plot_phase_diagram(diagram, fig.add_subplot(), inits, config)
    else:  # phase diagram on the left; scatter above residuals on the right
        fig = figure.Figure(figsize=(13, 6.4), dpi=DPI, layout="constrained")
        grid = fig.add_gridspec(2, 2, height_ratios=[2.2, 1])
        plot_phase_diagram(diagram, fig.add_subplot(grid[:, 0]), inits, config)
        plot_predicted_vs_measured(comparison, fig.add_subplot(grid[0, 1]))
        plot_prediction_errors(comparison, fig.add_subplot(grid[1, 1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Date": None} if path.suffix.lower() == ".svg" else None)
    return path
