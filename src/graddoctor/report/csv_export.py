"""`graddoctor export RUN --csv DIR`: one stored run as plain CSV files (empty cell = not measured)."""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from ..probe.trace import LAYER_METRICS, STEP_METRICS, LayerInfo
from ..store import RunStore
from ..store.recorder import series_rows


def _csv(path: Path, header: list[str], rows: list) -> None:
    def cell(v: object) -> object:
        return "" if v is None or (isinstance(v, float) and v != v) else v  # nan/NULL -> empty

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([cell(v) for v in row] for row in rows)


def export_csv(store: RunStore, run_id: int, out_dir: str | Path) -> list[Path]:
    """Write one run as plain CSV files (run, layers, steps, layer_stats, series, history, findings, treatments)."""
    run, trace, hist = store.get_run(run_id), store.load_trace(run_id), store.load_history(run_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    diag = store.load_diagnosis(run_id)
    steps = store.steps(run_id)
    lv = np.stack([trace[m] for m in LAYER_METRICS], axis=-1) if len(trace) else np.zeros((0, 0, 0))
    h = hist.to_dict()
    files = {
        "run.csv": (["id", "created", "kind", "parent", "status", "verdict", "final_acc", "n_steps", "spec", "config"],
                    [[run.id, run.created, run.kind, run.parent, run.status, run.verdict, run.final_acc, run.n_steps,
                      json.dumps(run.spec), json.dumps(run.config)]]),
        "layers.csv": (["depth", *[f.name for f in fields(LayerInfo)]],
                       [[i + 1, *asdict(x).values()] for i, x in enumerate(trace.layers)]),
        "steps.csv": (["step", *STEP_METRICS], steps),
        "layer_stats.csv": (["step", "depth", "layer", *LAYER_METRICS],
                            [[int(s), j + 1, name, *lv[k, j].tolist()] for k, s in enumerate(trace.steps)
                             for j, name in enumerate(trace.layer_names)]),
        "series.csv": (["series", "layer", "step", "index", "value"],  # index: time step, block, ... of the entry
                       [[name, layer, step, i, v] for name, layer, step, values in series_rows(trace.series)
                        for i, v in enumerate(values.tolist())]),
        "history.csv": (["epoch", "train_loss", "train_acc", "val_loss", "val_acc"],
                        list(zip(*(h[k] for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc"))))),
        "findings.csv": (["kind", "severity", "summary", "layers", "causes", "remedies", "evidence"],
                         [[f.kind, f.severity, f.summary, " ".join(f.layers), " ".join(c.name for c in f.causes),
                           " ".join(f.remedies), json.dumps(f.evidence, default=str)]
                          for f in (diag.findings if diag else [])]),
        "treatments.csv": (["remedy", "healthy", "loss", "accuracy", "seconds", "payload"],
                           [[t["remedy"], t["healthy"], t["loss"], t["accuracy"], t["seconds"],
                             json.dumps(t["payload"])] for t in store.treatments(run_id)]),
    }
    for name, (header, rows) in files.items():
        _csv(out / name, header, rows)
    return [out / name for name in files]
