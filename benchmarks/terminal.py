"""The terminal report: what `graddoctor check` prints at 80 columns and in a pipe, and what fitting costs.

Writes docs/results/terminal-check-80.txt and terminal-check-pipe.txt (the real command in a
subprocess, with COLUMNS=80 and without it: every exponent must be there in both), and
docs/results/terminal.{json,md}: the time to render the report of a 21-layer and a 210-layer
diagnosis at 80 and 160 columns and at natural width (median of interleaved repeats). Fitting
is arithmetic on the cells' lengths; rich's drawing of the table is most of the time.

    python benchmarks/terminal.py [--repeats 15]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
COMMAND = ["check", "examples/models.py:deep_sigmoid", "--input-shape", "64"]
WIDTHS = (80, 160, None)


def command_output(columns: str | None) -> str:
    """`graddoctor check ...` as a user runs it, its stdout a pipe; COLUMNS set or not."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update({"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", **({"COLUMNS": columns} if columns else {})})
    done = subprocess.run([sys.executable, "-m", "graddoctor", *COMMAND], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=True)
    return done.stdout


def timings(repeats: int) -> list[dict]:
    """Median ms to render each (diagnosis, width), the variants interleaved in every round."""
    from graddoctor.diagnose.findings import Diagnosis
    from graddoctor.report.terminal import render_text

    small = Diagnosis.from_dict(json.loads((ROOT / "tests" / "golden" / "diagnosis.json").read_text()))
    rows = [dict(r, name=f"{r['name']}.{k}") for k in range(10) for r in small.context["table"]]
    big = Diagnosis(small.findings, [r["name"] for r in rows], {**small.context, "table": rows})
    cases = [(label, d, w) for label, d in (("21 layers", small), ("210 layers", big)) for w in WIDTHS]
    times: dict[tuple, list[float]] = {(label, w): [] for label, _, w in cases}
    for _ in range(repeats):
        for label, d, w in cases:
            t0 = time.perf_counter()
            render_text(d, w)
            times[(label, w)].append(1e3 * (time.perf_counter() - t0))
    return [{"table": label, "width": w if w else "natural", "ms": round(statistics.median(times[(label, w)]), 1)}
            for label, _, w in cases]


def markdown(rows: list[dict], repeats: int) -> str:
    """The timing table."""
    out = ["| table | width | render time (median ms) |", "|---|---|---|"]
    out += [f"| {r['table']} | {r['width']} | {r['ms']:.1f} |" for r in rows]
    out.append("")
    out.append(f"Median of {repeats} interleaved repeats, one process, {os.cpu_count()} CPU cores shared with other "
               "jobs; `render_text` fits the columns, then rich draws the table.")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "terminal-check-80.txt").write_text(command_output("80"))
    (RESULTS / "terminal-check-pipe.txt").write_text(command_output(None))
    rows = timings(args.repeats)
    (RESULTS / "terminal.json").write_text(json.dumps({"repeats": args.repeats, "rows": rows}, indent=2) + "\n")
    (RESULTS / "terminal.md").write_text(markdown(rows, args.repeats))
    print(markdown(rows, args.repeats))


if __name__ == "__main__":
    main()
