"""The demo's story in numbers: what `graddoctor demo` finds, which remedy fixes it, and how long it takes.

Runs `graddoctor demo` as a user would (a subprocess, $COLUMNS=80), then reads every number
from the run store it wrote (the full runs, the diagnosis, the treat candidates) and writes
docs/results/demo.json, docs/results/demo.md (the story the getting-started page includes),
docs/results/demo-terminal.txt (what the demo printed at 80 columns) and the five figures as
docs/demo-N_NAME.png.

    python benchmarks/demo.py [--out DIR]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def story(store_path: Path, out: Path, seconds: float) -> dict:
    """Every number the getting-started page tells, from the demo's run store and files."""
    from graddoctor.store import RunStore

    with RunStore(store_path, create=False) as store:
        base = store.runs("train")[0]
        diag = store.load_diagnosis(base.id)
        rows = diag.context["table"]
        vanishing = next(f for f in diag.findings if f.kind == "vanishing")
        cause = vanishing.causes[0]
        treat = store.treatments(base.id)
        baseline = next(t for t in treat if t["remedy"] == "baseline")
        fixed = [t for t in treat if t["healthy"] and t["remedy"] != "baseline"]
        winner = min(fixed, key=lambda t: t["loss"]) if fixed else None
        children = store.children(base.id)
        retrained = children[0] if children else None
    first = rows[0]["signal_decades"]
    return {
        "seconds": round(seconds, 1), "cpus": os.cpu_count(), "date": datetime.date.today().isoformat(),
        "network": base.spec, "epochs": base.config.get("epochs"),
        "val_acc": base.final_acc, "verdict": base.verdict,
        "first_layer_decades": first, "reference_layer": diag.context.get("reference_layer"),
        "cause": cause.name, "cause_explanation": cause.explanation, "cause_evidence": cause.evidence,
        "causes": [c.name for c in vanishing.causes],
        "candidates": [{k: t[k] for k in ("remedy", "healthy", "loss", "accuracy", "seconds")} for t in treat],
        "baseline_loss": baseline["loss"],
        "winner": winner and {k: winner[k] for k in ("remedy", "loss", "accuracy")},
        "winner_changes": winner and winner["payload"].get("changes"),
        "retrained": retrained and {"val_acc": retrained.final_acc, "verdict": retrained.verdict,
                                    "network": retrained.spec},
        "report_kB": round((out / "report.html").stat().st_size / 1000),
        "figures": len(list((out / "figures").glob("*.png"))),
    }


def markdown(s: dict) -> str:
    """The story as the page shows it (every number formatted here, once)."""
    net = s["network"]
    lines = [
        f"- **measure**: a {net['depth']}-layer {net['activation']} MLP (width {net['width']}, {net['init']} init) "
        f"trains for {s['epochs']} epochs and ends at **{s['val_acc']:.1%}** validation accuracy "
        f"(chance is 10%); verdict: {s['verdict']}.",
        f"- **diagnose**: the error signal at the first layer is 10^{s['first_layer_decades']:.1f} of "
        f"`{s['reference_layer']}`'s. First cause, `{s['cause']}`: {s['cause_explanation']}"
        f"{'; then ' + ', '.join(f'`{c}`' for c in s['causes'][1:]) if s['causes'][1:] else ''}.",
    ]
    if s["winner"]:
        w = s["winner"]
        lines.append(f"- **treat**: of {len(s['candidates']) - 1} candidates, `{w['remedy']}` fixes it "
                     f"(loss {w['loss']:.2f} vs {s['baseline_loss']:.2f} for the untreated network, "
                     f"validation accuracy {w['accuracy']:.1%} after the treat budget).")
    else:
        lines.append("- **treat**: no candidate fixed it within the budget.")
    if s["retrained"]:
        r = s["retrained"]
        lines.append(f"- **retrain**: the winner trained for the full {s['epochs']} epochs reaches "
                     f"**{r['val_acc']:.1%}** validation accuracy; verdict: {r['verdict']}.")
    lines.append(f"- **show**: `report.html` ({s['report_kB']} kB, figures inlined), {s['figures']} figures "
                 "as PNG and SVG, and the run store.")
    lines.append("")
    lines.append(f"The whole demo took {s['seconds']:.0f} s of wall time ({s['cpus']} CPU cores, shared with "
                 f"other jobs, {s['date']}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="where the demo writes (default: a temporary folder)")
    ap.add_argument("--results", default=str(RESULTS), help="results folder (default docs/results)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "demo")
        env = {**os.environ, "COLUMNS": "80", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "graddoctor", "demo", "--out", str(out)], env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            sys.exit(f"graddoctor demo failed ({done.returncode}):\n{done.stderr}")
        s = story(out / "runs.db", out, seconds)
        for png in sorted((out / "figures").glob("*.png")):  # 1_depth_profile.png -> docs/demo-1_depth_profile.png
            shutil.copyfile(png, ROOT / "docs" / f"demo-{png.name}")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "demo.json").write_text(json.dumps(s, indent=2, default=str) + "\n")
    (results / "demo.md").write_text(markdown(s))
    (results / "demo-terminal.txt").write_text(done.stdout.replace(str(out), "graddoctor-demo"))
    print(markdown(s))


if __name__ == "__main__":
    main()
