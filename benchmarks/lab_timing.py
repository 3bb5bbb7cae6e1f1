"""Time of every lab experiment in quick mode on its seeds, and whether its claim held on each.

Runs in this process (one thread, no worker start-up), training every run (nothing is read
back), as `tests/test_lab.py` and `tests/test_rnn.py` run them: the wall time is what the
tests pay per experiment; the CPU time (this process) is less sensitive to other jobs on a
shared machine. Writes docs/results/lab_timing.json and .md (docs/lab.md includes the .md).
With --store the runs are kept, so `graddoctor lab run all --quick --resume --store DB` can
render them without training again.

    python benchmarks/lab_timing.py [--only depth,init] [--out docs/results] [--store lab-quick.db]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from graddoctor.lab import EXPERIMENTS, rnn, run_experiment
from graddoctor.lab.experiments import SEEDS

ROOT = Path(__file__).resolve().parents[1]


def measure(name: str, store: Path) -> dict:
    """Train one quick experiment on SEEDS into `store`: times, runs, verdict."""
    t0, c0 = time.perf_counter(), time.process_time()
    if name == "rnn":
        runs, conclusion = rnn.run(store, quick=True, progress_bar=False)
        n = len(runs)
    else:
        lab = run_experiment(name, store, quick=True, progress_bar=False)
        conclusion, n = lab.conclusion, len(lab.results)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"name": name, "runs": n, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "holds": conclusion.holds,
            "held_on": conclusion.held_on, "seeds": conclusion.seeds}


def markdown(rows: list[dict], load: float) -> str:
    """The results as Markdown (docs/lab.md and the benchmarks page include it)."""
    lines = ["| experiment | runs | wall time | CPU time | claim |", "|---|---|---|---|---|"]
    for r in rows:
        verdict = f"holds on {r['held_on']}/{r['seeds']} seeds" if r["holds"] else \
            f"**fails** (held on {r['held_on']}/{r['seeds']} seeds)"
        lines.append(f"| `{r['name']}` | {r['runs']} | {r['wall_s']:.0f} s | {r['cpu_s']:.0f} s | {verdict} |")
    wall, cpu = sum(r["wall_s"] for r in rows), sum(r["cpu_s"] for r in rows)
    lines += ["", f"In all: {wall:.0f} s wall, {cpu:.0f} s CPU, one thread (`python benchmarks/lab_timing.py`, "
              f"seeds {', '.join(map(str, SEEDS))}; load average {load:.1f} on {os.cpu_count()} cores when it "
              "started: wall times grow with the load, CPU times much less).", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join([*EXPERIMENTS, "rnn"]), help="comma-separated experiment names")
    p.add_argument("--out", default=str(ROOT / "docs" / "results"), help="where the results files go")
    p.add_argument("--store", default=None, help="keep the runs in this run store (default: a temporary one)")
    args = p.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    rows = []
    print(f"{'experiment':<12} {'runs':>4} {'wall':>8} {'cpu':>8}  claim")
    tmp = tempfile.TemporaryDirectory()
    store = Path(args.store) if args.store else Path(tmp.name) / "runs.db"
    for name in args.only.split(","):
        r = measure(name, store)
        rows.append(r)
        print(f"{name:<12} {r['runs']:>4} {r['wall_s']:>7.1f}s {r['cpu_s']:>7.1f}s  "
              f"{'holds' if r['holds'] else 'FAILS'} on {r['held_on']}/{r['seeds']} seeds", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lab_timing.json").write_text(json.dumps({"rows": rows, "load_average": load, "cpus": os.cpu_count(),
                                                     "machine": platform.machine(), "torch": torch.__version__},
                                                    indent=1) + "\n")
    (out / "lab_timing.md").write_text(markdown(rows, load))
    tmp.cleanup()
    print(f"total: {sum(r['wall_s'] for r in rows):.0f} s wall, {sum(r['cpu_s'] for r in rows):.0f} s CPU; "
          f"wrote {out / 'lab_timing.md'}")


if __name__ == "__main__":
    main()
