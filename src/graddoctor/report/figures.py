"""The five figures: pure `plot_*(data, ax)` drawers over figdata's numbers; `render_all` writes files.

matplotlib is imported where used (no pyplot, no global state): figures are
`matplotlib.figure.Figure` objects drawn with the Agg renderer, saved as PNG and SVG.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from ..errors import require
from ..store import RunStore
from . import figdata as fd
from .figdata import ActivationPanel, Chain, Heatmap, Profile, ReportData, Series, TreatmentBar

DPI = 100  # PNG resolution: keeps the inlined report small (a figure is ~30-80 kB)
FORMATS = ("png", "svg")
LOG_SPAN = 1e3  # a curve panel switches to a log y axis when its values span more than this factor
NAMES = ("depth_profile", "backward_chain", "activations", "heatmap", "training")


def _text(s: str) -> str:
    """A label from stored data, safe from matplotlib's $...$ mathtext."""
    return str(s).replace("$", r"\$")


def _figure(w: float, h: float):
    figure = require("matplotlib.figure", "report")
    return figure.Figure(figsize=(w, h), dpi=DPI, layout="constrained")


# -- 1. per-layer gradient RMS against depth, several runs ------------------------------
def plot_depth_profile(profiles: list[Profile], ax) -> None:
    """Log-scale per-layer gradient RMS against depth, one line per run."""
    for p in profiles:
        ok = np.isfinite(p.values) & (p.values > 0)
        ax.plot(p.depth[ok], p.values[ok], marker="o", ms=3, label=_text(p.label))
    ax.set_yscale("log")
    ax.set_xlabel("layer depth (1 = next to the input)")
    ax.set_ylabel("weight-gradient RMS (median over steps)")
    ax.set_title("Gradient size at every depth")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)


# -- 2. the backward pass as a chain ----------------------------------------------------
def plot_backward_chain(chain: Chain, ax) -> None:
    """Layers as nodes (size and colour: error-signal magnitude), arrows labelled with gains."""
    from matplotlib.colors import Normalize

    n = len(chain.names)
    x = np.arange(1, n + 1)
    ok = np.isfinite(chain.signal) & (chain.signal > 0)
    lg = np.where(ok, np.log10(np.where(ok, chain.signal, 1.0)), np.nan)
    lo, hi = (np.nanmin(lg), np.nanmax(lg)) if ok.any() else (0.0, 1.0)
    span = max(hi - lo, 1e-9)
    sizes = 40 + 560 * (np.nan_to_num(lg, nan=lo) - lo) / span
    norm = Normalize(lo, lo + span)
    pts = ax.scatter(x[ok], np.zeros(ok.sum()), s=sizes[ok], c=lg[ok], cmap="viridis", norm=norm,
                     zorder=3, edgecolors="black", linewidths=0.5)
    ax.scatter(x[~ok], np.zeros((~ok).sum()), marker="x", color="grey", zorder=3)
    for i, g in enumerate(chain.gain):  # arrow from layer i+2 back to layer i+1 (1-based)
        ax.annotate("", xy=(x[i] + 0.18, 0), xytext=(x[i + 1] - 0.18, 0),
                    arrowprops={"arrowstyle": "->", "color": "0.3", "lw": 1})
        if math.isfinite(g):
            ax.text((x[i] + x[i + 1]) / 2, 0.12, f"×{g:.2g}", ha="center", va="bottom", fontsize=7,
                    rotation=90 if n > 12 else 0, color="tab:blue" if g < 1 else "tab:red")
    ax.figure.colorbar(pts, ax=ax, label="log10 " + ("‖δ‖ per sample" if chain.per_sample else "δ RMS"),
                       shrink=0.8)
    ax.set_xlim(0.3, n + 0.7)
    ax.set_ylim(-0.5, 0.8)
    ax.set_yticks([])
    ax.set_xticks(x)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("layer depth  (the error signal flows right to left: loss → input)")
    ax.set_title("The backward pass: measured gain on each arrow")


# -- 3. activations, derivatives, saturation, measured pre-activations ------------------
def plot_activation(panel: ActivationPanel, ax) -> None:
    """phi, phi', the flat regions shaded, and the run's pre-activation spread if it applies."""
    ax.plot(panel.x, panel.phi, color="tab:blue", label=f"{panel.name}(x)")
    ax.plot(panel.x, panel.dphi, color="tab:orange", ls="--", label=f"{panel.name}'(x)")
    for i, (a, b) in enumerate(panel.flat):
        ax.axvspan(a, b, color="0.5", alpha=0.18, lw=0, label="φ' < 1% of max" if i == 0 else None)
    for k, (label, sigma) in enumerate(panel.measured):
        dens = np.exp(-0.5 * (panel.x / sigma) ** 2)  # peak scaled to 1: the shape, not the height
        ax.plot(panel.x, dens, color=f"C{k + 2}", lw=1.2, ls=(0, (1, 1.5 + k)),
                label=f"{label} input ≈ N(0, {sigma:.2g}²)")
    if panel.measured:  # the trace keeps moments only: say that the curves are Gaussians
        ax.text(0.02, 0.97, "dotted: this run's pre-activations\n(Gaussian with the measured RMS)",
                transform=ax.transAxes, va="top", fontsize=7)
    if panel.flat_fraction is not None:
        what, frac = panel.flat_fraction
        ax.text(0.02, 0.80, f"measured: {frac:.0%} of units {what}", transform=ax.transAxes, va="top",
                fontsize=7, weight="bold")
    ax.set_ylim(-1.15, 1.75)
    ax.axhline(0, color="0.7", lw=0.5)
    ax.set_xlabel("pre-activation x")
    ax.set_title(panel.name)
    ax.legend(fontsize=6.5, loc="lower right")


# -- 4. step x layer heat map -----------------------------------------------------------
def plot_heatmap(hm: Heatmap, ax) -> None:
    """log10 of a per-layer metric: layers down, recorded steps across."""
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    cmap = matplotlib.colormaps["magma"].with_extremes(bad="0.8")
    s = hm.steps if len(hm.steps) else np.array([0])
    extent = (s[0] - 0.5, s[-1] + 0.5, len(hm.names) + 0.5, 0.5)
    im = ax.imshow(np.ma.masked_invalid(hm.log10), aspect="auto", cmap=cmap, extent=extent,
                   interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, label=f"log10 {hm.metric}")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("training step")
    ax.set_ylabel("layer depth")
    ax.set_title(f"{hm.metric} over training (grey: not finite)")


# -- 5. training curves and treat candidates --------------------------------------------
def plot_curves(series: list[Series], ax, ylabel: str, title: str) -> None:
    """One line per run."""
    for s in series:
        ax.plot(s.x, s.y, marker="o" if len(s.x) < 30 else None, ms=3, lw=1, label=_text(s.label))
    ys = np.concatenate([s.y for s in series]) if series else np.array([])
    if len(ys) and (ys > 0).all() and ys.max() > LOG_SPAN * ys.min():
        ax.set_yscale("log")  # e.g. an exploding run's loss next to a healthy one
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(fontsize=7)


def plot_treatments(bars: list[TreatmentBar], ax) -> None:
    """Final accuracy per treat candidate; green: healthy gradients, red: not, grey: unknown."""
    colours = [{True: "tab:green", False: "tab:red"}.get(b.healthy, "0.6") for b in bars]
    ax.barh(np.arange(len(bars)), [0 if math.isnan(b.accuracy) else b.accuracy for b in bars], color=colours)
    for i, b in enumerate(bars):
        if not math.isnan(b.accuracy):
            ax.text(b.accuracy + 0.01, i, f"{b.accuracy:.3f}", va="center", fontsize=7)
    ax.set_yticks(np.arange(len(bars)), [_text(b.remedy) for b in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("final validation accuracy")
    ax.set_title("treat: candidates (green = healthy)")


# -- assembling -------------------------------------------------------------------------
def build_figures(data: ReportData) -> dict:
    """name -> matplotlib Figure, for every figure the data supports."""
    from matplotlib.ticker import MaxNLocator

    figs = {}
    if len(data.trace):
        f = _figure(6.5, 4.0)
        plot_depth_profile(data.profiles(), f.add_subplot())
        figs["depth_profile"] = f
        f = _figure(max(6.5, 0.45 * len(data.trace.layers) + 2), 2.8)
        plot_backward_chain(fd.backward_chain(data.trace), f.add_subplot())
        figs["backward_chain"] = f
        f = _figure(6.5, max(2.5, 0.14 * len(data.trace.layers) + 1.2))
        plot_heatmap(fd.heatmap(data.trace), f.add_subplot())
        figs["heatmap"] = f
    panels = fd.activation_panels(data.trace)
    f = _figure(10, 3.2)
    for panel, ax in zip(panels, f.subplots(1, len(panels))):
        plot_activation(panel, ax)
    figs["activations"] = f
    hist = data.histories()
    f = _figure(10 if not data.treatments else 13, 3.2)
    axes = f.subplots(1, 3 if data.treatments else 2)
    plot_curves(fd.loss_curves(hist), axes[0], "training loss", "Loss per step")
    axes[0].set_xlabel("step")
    plot_curves(fd.accuracy_curves(hist), axes[1], "validation accuracy", "Accuracy per epoch")
    axes[1].set_xlabel("epoch")
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    if data.treatments:
        plot_treatments(fd.treatment_bars(data.treatments), axes[2])
    figs["training"] = f
    return {k: figs[k] for k in NAMES if k in figs}


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes (for inlining)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save(figs: dict, out_dir: str | Path) -> list[Path]:
    """Write every figure as out_dir/NN_name.{png,svg}; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figs.items():
        for ext in FORMATS:
            p = out / f"{NAMES.index(name) + 1}_{name}.{ext}"
            fig.savefig(p, format=ext, metadata={"Date": None} if ext == "svg" else None)
            paths.append(p)
    return paths


def render_all(store: RunStore, run_id: int, out_dir: str | Path, compare: tuple[int, ...] = ()) -> list[Path]:
    """Re-render every figure of a stored run (no retraining) as PNG and SVG files."""
    return save(build_figures(fd.load_report_data(store, run_id, compare)), out_dir)
