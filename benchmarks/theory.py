"""Mean-field theory vs measurement: log10 ||delta_1||^2 / ||delta_L||^2 at initialisation.

Issue 7's accuracy target: MLPs of width 256 (input width 256, N(0,1) inputs, biases zero),
depths 10/20/50, activations sigmoid/tanh/relu, inits small/xavier_normal/he_normal;
|predicted - measured| <= 0.2 decades, measured = mean of log10 over 5 seeds, for every
configuration. Prints the full table (layer-resolved prediction, the fixed-point form
(L-1) log10 chi_1 for contrast, measured mean +- std) and the worst error.
--seed-sets K repeats the measurement on K disjoint sets of --seeds seeds (seeds 0..K*seeds-1)
and reports each configuration's worst set, how many sets miss the target, and the error of
the mean over all K*seeds seeds: how much the verdict depends on the seeds.

    python benchmarks/theory.py [--seeds 5] [--seed-sets 1] [--figure docs/theory-phase.png]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import time

import numpy as np
import torch

from graddoctor import theory
from graddoctor.nets import NetSpec
from graddoctor.theory import measure as theory_measure

WIDTH = 256
DEPTHS = (10, 20, 50)
ACTIVATIONS = ("sigmoid", "tanh", "relu")
INITS = ("small", "xavier_normal", "he_normal")
TARGET = 0.2  # decades (issue 7)


def configs() -> list[NetSpec]:
    """The 27 networks of the accuracy target."""
    return [NetSpec(depth=d, width=WIDTH, in_shape=(WIDTH,), activation=a, init=i)
            for a in ACTIVATIONS for i in INITS for d in DEPTHS]


def evaluate(seeds: int, seed_sets: int = 1) -> list[dict]:
    """One row per configuration: predicted, fixed-point form, measured (first set), worst set."""
    rows = []
    for spec in configs():
        p = theory.predict(spec)
        values = theory_measure.log10_ratio(spec, seeds * seed_sets)
        means = values.reshape(seed_sets, seeds).mean(axis=1) - p.log10_ratio
        rows.append({"activation": spec.activation, "init": spec.init, "depth": spec.depth,
                     "predicted": p.log10_ratio, "fixed_point": p.log10_ratio_fixed_point,
                     "measured": float(values[:seeds].mean()), "std": float(values[:seeds].std()),
                     "worst_set": float(means[np.argmax(np.abs(means))]),
                     "sets_missed": int((np.abs(means) > TARGET).sum()),
                     "all_seeds": float(values.mean() - p.log10_ratio)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed-sets", type=int, default=1)
    ap.add_argument("--figure", help="write the phase diagram + predicted-vs-measured figure here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = evaluate(args.seeds, args.seed_sets)
    head = (f"{'activation':<8} {'init':<14} {'depth':>5} {'predicted':>10} {'fixed-pt':>9} "
            f"{'measured':>17} {'error':>7}")
    if args.seed_sets > 1:
        head += f" {'worst set':>9} {'missed':>6} {'all seeds':>9}"
    print(f"width {WIDTH}, measured = mean of log10 over {args.seeds} seeds (float64, batch "
          f"{theory_measure.BATCH}); error = measured - predicted, in decades\n{head}")
    for r in rows:
        err = r["measured"] - r["predicted"]
        line = (f"{r['activation']:<8} {r['init']:<14} {r['depth']:>5} {r['predicted']:>10.3f} "
                f"{r['fixed_point']:>9.3f} {r['measured']:>9.3f} ± {r['std']:.3f} {err:>+7.3f}")
        if args.seed_sets > 1:
            line += f" {r['worst_set']:>+9.3f} {r['sets_missed']:>6d} {r['all_seeds']:>+9.3f}"
        print(line + ("" if abs(err) <= TARGET else "  > target"))
    errs = np.array([abs(r["measured"] - r["predicted"]) for r in rows])
    print(f"worst |error| {errs.max():.3f} decades; {int((errs <= TARGET).sum())}/{len(rows)} "
          f"within {TARGET} ({time.perf_counter() - t0:.1f} s)")
    if args.seed_sets > 1:
        worst = np.array([abs(r["worst_set"]) for r in rows])
        print(f"over {args.seed_sets} disjoint seed sets: worst |error| {worst.max():.3f}; "
              f"{int((worst <= TARGET).sum())}/{len(rows)} configurations within {TARGET} in every set")
    if args.figure:
        from graddoctor.report import theory_figures

        path = theory_figures.write_figure(args.figure, theory.phase_diagram("tanh"),
                                           theory.init_points("tanh", WIDTH), comparison=rows)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
