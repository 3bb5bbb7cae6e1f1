"""Pure drawers for the lab's figures: `plot_*(numbers, ax or axes)` over RunSummary numbers.

The per-layer profiles and training curves reuse report.figures' drawers; nothing here reads
files or decides which panels an experiment shows (render.py does).
"""
from __future__ import annotations

import math

import numpy as np

from ..report import figdata as fd
from ..report.figures import plot_curves, plot_depth_profile
from ..training import History
from .claims import SMOOTH, VANISH
from .dynamics import outcome
from .points import ZERO_DECADES, Point, acc, counts, points
from .summary import RunSummary

COLOURS = 10  # matplotlib's default colour cycle: later lines are dashed
CURVE_POINTS = 200  # points drawn per loss curve (keeps the PNG small)
OUTCOME_COLOURS = {"trains": "tab:green", "stalls": "0.7", "vanishes": "tab:blue", "saturates": "tab:cyan",
                   "dead units": "tab:purple", "explodes": "tab:red", "diverges": "tab:brown",
                   "loss grows": "tab:orange", "differs by seed": "white"}


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


def plot_loss(histories: dict[str, History], ax) -> None:
    """Training loss per step of every run (running mean)."""
    curves = [smooth(s) for s in fd.loss_curves(histories)]
    plot_curves(curves, ax, "training loss", f"Loss per step (mean of {SMOOTH})")
    ax.set_xlabel("step")


def _series(pts: list[Point], across: str) -> dict[str, list[Point]]:
    out: dict[str, list[Point]] = {}
    for p in pts:
        key = ", ".join(v for k, v in p.coords.items() if k != across)
        out.setdefault(key, []).append(p)
    return out


def _shown(v: float) -> float:
    """nan for a ratio that only says 'the signal is exactly zero' (it would flatten the axis)."""
    return v if v >= ZERO_DECADES else math.nan


def _band(ax, x: list[int], ys: np.ndarray, **kw) -> None:
    """Median over seeds (rows of ys: points, columns: seeds) with a min-max error bar."""
    with np.errstate(all="ignore"):
        mid = np.nanmedian(ys, axis=1) if ys.size else ys
        lo, hi = np.nanmin(ys, axis=1), np.nanmax(ys, axis=1)
    ax.errorbar(x, mid, yerr=[mid - lo, hi - mid], capsize=3, **kw)


def plot_by_depth(runs: list[RunSummary], axes) -> None:
    """Gradient ratio (at init: solid, trained: dashed) and final accuracy against depth, per series;
    median over the seeds with their min-max range."""
    import warnings

    for k, (label, pts) in enumerate(_series(points(runs), "depth").items()):
        pts = sorted(pts, key=lambda p: p.depth)
        d = [p.depth for p in pts]
        with warnings.catch_warnings():  # an all-'zero' point has no median to draw
            warnings.simplefilter("ignore", RuntimeWarning)
            _band(axes[0], d, np.array([[_shown(v) for v in p.get("decades_init")] for p in pts]), marker="o",
                  color=f"C{k}", label=f"{label}, at init")
            _band(axes[0], d, np.array([[_shown(v) for v in p.get("decades_trained")] for p in pts]), marker="x",
                  ls="--", color=f"C{k}", label=f"{label}, trained")
            _band(axes[1], d, np.array([p.get("val_acc") for p in pts]), marker="o", color=f"C{k}", label=label)
    axes[0].axhspan(-VANISH, VANISH, color="tab:green", alpha=0.08, lw=0, label=f"within {VANISH:g} decades")
    axes[0].set_ylabel("log10 ‖δ₁‖ / ‖δ_L‖ (decades)")
    axes[0].set_title("Gradient ratio, first / last hidden layer")
    axes[1].set_ylabel("final validation accuracy")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("Accuracy (median, min-max over seeds)")
    for ax in axes:
        ax.set_xlabel("hidden layers")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)


def plot_theory(runs: list[RunSummary], ax) -> None:
    """Measured gradient ratio at init against the mean-field prediction (every seed; labelled once)."""
    x = np.array([r.extra.get("predicted", math.nan) for r in runs])
    y = np.array([_shown(r.decades_init) for r in runs])
    ok = np.isfinite(x) & np.isfinite(y)
    lim = (min(x[ok].min(), y[ok].min()) - 2, max(x[ok].max(), y[ok].max()) + 2) if ok.any() else (-1, 1)
    ax.plot(lim, lim, color="0.6", lw=1, ls="--", label="measured = predicted")
    for k, p in enumerate(points(runs)):
        px = p.get(lambda r: r.extra.get("predicted", math.nan))
        py = np.array([_shown(v) for v in p.get("decades_init")])
        keep = np.isfinite(px) & np.isfinite(py)
        if keep.any():
            ax.scatter(px[keep], py[keep], s=18, zorder=3, color=f"C{k % COLOURS}", alpha=0.8)
            ax.annotate(p.label, (px[keep][0], py[keep][0]), fontsize=6.5, xytext=(4, -3), textcoords="offset points")
    ax.set_xlabel("mean-field prediction (decades)")
    ax.set_ylabel("measured at init (decades)")
    ax.set_title("log10 ‖δ₁‖ / ‖δ_L‖: theory vs measurement")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")


def plot_grid(runs: list[RunSummary], axes) -> None:
    """Outcome of every (learning rate, momentum) cell over the seeds, one panel per network."""
    from matplotlib.patches import Patch, Rectangle

    for ax, (net, pts) in zip(axes, _by_coord(points(runs), "net").items()):
        lrs = sorted({p.runs[0].extra["lr"] for p in pts})
        moms = sorted({p.runs[0].extra["momentum"] for p in pts})
        for p in pts:
            i, j = lrs.index(p.runs[0].extra["lr"]), moms.index(p.runs[0].extra["momentum"])
            got = [outcome(r) for r in p.runs]
            colour = OUTCOME_COLOURS[got[0] if len(set(got)) == 1 else "differs by seed"]
            ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, facecolor=colour, edgecolor="0.5", alpha=0.8))
            ax.text(i, j, f"{counts(got).replace('; ', chr(10))}\nacc {acc(float(np.median(p.get('val_acc'))))}",
                    ha="center", va="center", fontsize=6.5)
        ax.set_xlim(-0.5, len(lrs) - 0.5)
        ax.set_ylim(-0.5, len(moms) - 0.5)
        ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
        ax.set_yticks(range(len(moms)), [f"{v:g}" for v in moms])
        ax.set_xlabel("learning rate (SGD)")
        ax.set_ylabel("momentum")
        ax.set_title(f"{net}: outcome per step size")
    shown = {outcome(r) for r in runs} | {"differs by seed"}
    axes[-1].legend(handles=[Patch(facecolor=c, edgecolor="0.5", label=o) for o, c in OUTCOME_COLOURS.items()
                             if o in shown], fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))


def _by_coord(runs: list, axis: str) -> dict[str, list]:
    out: dict[str, list] = {}
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
            top = " (top)" if j == r.act_means.shape[1] - 1 else ""
            ax.plot(r.steps, r.act_means[:, j], lw=1.2, label=f"layer {j + 1}{top}")
        ax.set_title(f"{r.label}: mean output per layer", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel("step")
        ax.set_ylabel("mean output")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
