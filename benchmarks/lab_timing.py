"""Wall time of every lab experiment in quick mode, and whether its claim held, per seed.

Runs in this process (one thread, no worker start-up), each experiment into a fresh
temporary run store, so the times are what `tests/test_lab.py` pays per experiment.

    python benchmarks/lab_timing.py [--seeds 0,1,2] [--only depth,init]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import tempfile
import time
from pathlib import Path

import torch

from graddoctor.lab import EXPERIMENTS, run_experiment


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--only", default=",".join(EXPERIMENTS), help="comma-separated experiment names")
    args = p.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{'experiment':<12} {'runs':>4} " + " ".join(f"{'seed ' + str(s):>14}" for s in seeds))
    total = 0.0
    for name in args.only.split(","):
        cells = []
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                lab = run_experiment(name, Path(tmp) / "runs.db", quick=True, seed=seed, progress_bar=False)
                dt = time.perf_counter() - t0
            total += dt
            cells.append(f"{dt:6.1f} s {'holds' if lab.conclusion.holds else 'FAILS'}")
        print(f"{name:<12} {len(lab.results):>4} " + " ".join(f"{c:>14}" for c in cells))
    print(f"total: {total:.0f} s")


if __name__ == "__main__":
    main()
