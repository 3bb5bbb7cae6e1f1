"""The self-contained HTML report: one file, figures inlined as PNG data URIs, no script, no fetches.

jinja2 with autoescaping: every name that comes from a model or a user (layer names, specs)
is text, never markup. `render_html` is pure (data in, string out); `write_report` reads the
store and writes the file.
"""
from __future__ import annotations

import base64
import json
import math
from pathlib import Path

from ..errors import require
from ..store import RunStore
from . import figdata as fd
from . import figures
from .columns import judged_by_structure
from .terminal import depth_axis, structure_summary

TEMPLATE = "report.html"
# Figure name -> (title, caption): what to look at in each picture.
FIGURE_TEXT = {
    "depth_profile": ("Gradient size at every depth",
                      "Per-layer weight-gradient RMS (log scale, median over the recorded steps) against depth, "
                      "for this run and the runs it is compared with. A healthy network keeps it within a "
                      "decade or two; a vanishing one falls towards the input, an exploding one rises."),
    "backward_chain": ("The backward pass",
                       "Each node is a layer; its size and colour give the error signal ‖∂L/∂output‖ per "
                       "sample. Each arrow carries the measured gain: the factor that step of the chain rule "
                       "multiplies the signal by on its way back. Gains below 1 compound into vanishing, above "
                       "1 into exploding."),
    "activations": ("Why saturation kills the gradient",
                    "Sigmoid, tanh and ReLU (solid) with their derivatives (dashed); shaded: where the "
                    "derivative is below 1% of its maximum, so almost no gradient passes. Dotted: this run's "
                    "pre-activations, drawn as Gaussians with the measured RMS (the trace keeps moments, not "
                    "histograms)."),
    "heatmap": ("The gradient over training",
                "log10 weight-gradient RMS for every layer (rows, input at the top) and recorded step (columns)."),
    "training": ("Training curves",
                 "Training loss per step and validation accuracy per epoch; after treat, each candidate's "
                 "final accuracy."),
}
TEXT_COLUMNS = ("name", "type", "activation", "compared_with")
HIDDEN_COLUMNS = ("block",)  # in the per-layer table's rows, not shown: "compared with" names it
LONG = 4  # evidence with more values than this (e.g. one per layer) goes into a folded <details>


def num(v: object) -> str:
    """Format a table cell: 3 significant digits, '—' for missing or non-finite."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.3g}" if math.isfinite(v) else "—"
    if isinstance(v, (list, tuple)):
        return ", ".join(num(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    return str(v)


def split_evidence(evidence: dict) -> tuple[list, list]:
    """(short items shown inline, long items — dicts and lists of more than LONG values — folded away)."""
    short, long = [], []
    for k, v in evidence.items():
        big = isinstance(v, (dict, list, tuple)) and len(v) > LONG
        (long if big else short).append((k, v))
    return short, long


def _verdict(data: fd.ReportData) -> dict:
    d = data.diagnosis
    if d is None:
        return {"css": "unknown", "text": "Not diagnosed: this run has no stored diagnosis."}
    if d.healthy:
        return {"css": "healthy", "text": "HEALTHY: gradients flow through every layer."}
    worst = next(f for f in d.findings if f.severity != "info")
    return {"css": "unhealthy", "text": f"UNHEALTHY ({', '.join(sorted(d.kinds()))}): {worst.summary}"}


def report_context(data: fd.ReportData, pngs: dict[str, bytes], store_path: str = "") -> dict:
    """Everything the template shows, as plain values (pure)."""
    from .. import __version__

    d = data.diagnosis
    table = (d.context.get("table") if d is not None else None) or fd.layer_rows(data.trace)
    note = ("Medians over the steps the diagnosis judged." if d is not None and d.context.get("table")
            else "Medians over all recorded steps.")
    if judged_by_structure(table):
        note += (" signal decades: log10 of the layer's error signal relative to the reference layer "
                 f"{d.context.get('reference_layer')!r} (the chain view); judged decades: relative to what the "
                 "verdict compared it with (compared with: its branch's exit, its block's output, the value "
                 "projection for Q/K; empty: not compared layer by layer).")
    cols = [k for k in dict.fromkeys(k for row in table for k in row) if k not in HIDDEN_COLUMNS]
    return {
        "run": data.run, "spec_summary": fd.spec_summary(data.run.spec), "final_acc": data.run.final_acc,
        "verdict": _verdict(data), "findings": list(d.findings) if d is not None else [],
        "structure": structure_summary(d), "depth_axis": depth_axis(d),
        "layer_rows": table, "layer_cols": cols, "text_cols": TEXT_COLUMNS, "layer_note": note,
        "figures": [{"name": k, "title": FIGURE_TEXT[k][0], "caption": FIGURE_TEXT[k][1],
                     "b64": base64.b64encode(v).decode("ascii")} for k, v in pngs.items()],
        "treatments": data.treatments,
        "spec_json": json.dumps(data.run.spec, indent=2), "config_json": json.dumps(data.run.config, indent=2),
        "store_path": store_path, "version": __version__,
    }


def render_html(context: dict) -> str:
    """Fill the template (autoescaped)."""
    jinja2 = require("jinja2", "report")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["num"] = num
    env.filters["split_evidence"] = split_evidence
    return env.get_template(TEMPLATE).render(**context)


def write_report(store: RunStore, run_id: int, out: str | Path, compare: tuple[int, ...] = (),
                 figures_dir: str | Path | None = None) -> Path:
    """Write the HTML report of a stored run (and, if asked, the figures as PNG + SVG files)."""
    data = fd.load_report_data(store, run_id, compare)
    figs = figures.build_figures(data)
    if figures_dir is not None:
        figures.save(figs, figures_dir)
    pngs = {k: figures.png_bytes(f) for k, f in figs.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(report_context(data, pngs, str(store.path))), encoding="utf-8")
    return out
