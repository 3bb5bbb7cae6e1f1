"""Repair rate and cost of `graddoctor.treat` on the diagnosis corpus (tests/corpus.py).

For every pathological member: treat(model factory, digits, the case's learning rate) with
the default budget; "repaired" = treat found a candidate that removes the finding and beats
the baseline's training loss by >= 10% (TreatResult.best is not None). Reported per planted kind.

Cost = treat's total wall time / the wall time of one full training run of the untreated
network, where a full run is what a user would do on digits: 10 epochs (TrainConfig's and
`graddoctor demo`'s default; 230 SGD steps at batch 64), unprobed, timed in the same process
right before treat. Where the untreated run diverges (training stops at the first non-finite
loss), the full run of the winning network is timed instead. The step cost (optimizer steps
treat ran, all candidates together / 230) is printed too: it does not depend on the load.
Healthy members: treat must propose zero changes (no candidate tried).

    python benchmarks/treat.py [--seeds 1] [--budget 60] [--only sigmoid]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from corpus import HEALTHY, PATHOLOGICAL, _digits

import graddoctor as gd
from graddoctor import data as gd_data
from graddoctor.remedies.treat import BUDGET_STEPS

FULL_EPOCHS = 10  # the full training run the cost is measured against (see the docstring)
KINDS = ("vanishing", "exploding")


def case_data(case, seed: int) -> gd.Dataset:
    """The case's training data: digits (scaled like the case's batch), or the case's own batch."""
    _, x, y, _ = case.make(seed)
    if x.dim() in (2, 4) and x.shape[1:] in ((64,), (1, 8, 8)):
        d = gd_data.digits(seed=0, image=x.dim() == 4)
        ref = _digits(x.dim() == 4)[0]
        scale = float(x.std() / ref.std())  # the planted input scale (1 for most members)
        return gd.Dataset(d.name, d.x_train * scale, d.y_train, d.x_val * scale, d.y_val, d.n_classes)
    return gd.from_tensors(x, y, seed=seed)


def full_run_seconds(model, data, config: gd.TrainConfig) -> tuple[float, bool]:
    """Wall time of one plain FULL_EPOCHS training run, and whether it diverged (and stopped)."""
    cfg = replace(config, epochs=FULL_EPOCHS, max_steps=None)
    t0 = time.perf_counter()
    hist = gd.train(model, data, cfg, progress_bar=False)
    return time.perf_counter() - t0, hist.diverged_at is not None


def run_case(case, seed: int, budget: int) -> dict:
    """Treat one corpus member; returns what the table needs."""
    data = case_data(case, seed)
    config = gd.TrainConfig(lr=case.lr, seed=seed)
    full, diverged = full_run_seconds(case.make(seed)[0], data, config)
    steps_full = FULL_EPOCHS * -(-len(data.x_train) // config.batch_size)
    res = gd.treat(lambda: case.make(seed)[0], data, config=config, budget_steps=budget, seed=seed,
                   progress_bar=False)
    best = res.best
    if diverged:  # the untreated run stops at the first non-finite loss: time the full run of the fix
        full = (full_run_seconds(best.patient.build(seed), data, best.patient.config)[0] if best else
                full * steps_full / max(1, res.baseline.steps))
    return {"id": case.id, "kinds": set(case.kinds), "found": sorted(res.diagnosis.kinds()),
            "repaired": best is not None, "best": best.label if best else "-",
            "acc": (res.baseline.val_acc, best.val_acc if best else float("nan")),
            "tried": len(res.trials) - 1, "trained": sum(t.steps > 0 for t in res.trials[1:]),
            "cost": res.seconds / full, "step_cost": sum(t.steps for t in res.trials) / steps_full,
            "seconds": res.seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--budget", type=int, default=BUDGET_STEPS)
    ap.add_argument("--only", default="", help="run only the cases whose id contains this")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    sick = [c for c in PATHOLOGICAL if args.only in c.id]
    if sick:  # warm-up (first-call allocations, lazy imports) so that the first full run is fair
        full_run_seconds(sick[0].make(0)[0], case_data(sick[0], 0), gd.TrainConfig(lr=sick[0].lr))
    # lstm-lm has a custom loss (sequence cross-entropy) that graddoctor.train cannot use
    well = [c for c in HEALTHY if args.only in c.id and c.id != "lstm-lm"]
    rows = [run_case(c, s, args.budget) for s in range(args.seeds) for c in sick]
    print(f"treat on the corpus: budget {args.budget} steps, cost vs one {FULL_EPOCHS}-epoch run on digits")
    print(f"{'case':<24} {'found':<34} {'best remedy':<36} {'val acc before->after':<22} "
          f"{'tried':>5} {'trained':>7} {'cost':>6} {'steps':>6}")
    for r in rows:
        acc = f"{r['acc'][0]:.2f} -> {r['acc'][1]:.2f}" if r["repaired"] else f"{r['acc'][0]:.2f} -> -"
        print(f"{r['id']:<24} {','.join(r['found']) or 'healthy':<34} {r['best']:<36} {acc:<22} "
              f"{r['tried']:>5} {r['trained']:>7} {r['cost']:>5.2f}x {r['step_cost']:>5.2f}x")
    print()
    print(f"{'kind':<12} {'treated':>7} {'repaired':>8} {'rate':>6}  {'cost median':>11} {'cost max':>8} "
          f"{'step cost median':>16}")
    groups = [(k, [r for r in rows if k in r["kinds"]]) for k in KINDS]
    groups.append(("other", [r for r in rows if not r["kinds"] & set(KINDS)]))
    for kind, rs in groups:
        if rs:
            n = sum(r["repaired"] for r in rs)
            print(f"{kind:<12} {len(rs):>7} {n:>8} {n / len(rs):>6.0%}  "
                  f"{statistics.median(r['cost'] for r in rs):>10.2f}x {max(r['cost'] for r in rs):>7.2f}x "
                  f"{statistics.median(r['step_cost'] for r in rs):>15.2f}x")
    changes = 0
    for s in range(args.seeds):
        for c in well:
            res = gd.treat(lambda: c.make(s)[0], case_data(c, s), config=gd.TrainConfig(lr=c.lr),
                           budget_steps=args.budget, seed=s, progress_bar=False)
            if len(res.trials) > 1:
                kinds = ", ".join(res.diagnosis.kinds())
                print(f"healthy {c.id}: {len(res.trials) - 1} candidates tried ({kinds})")
            changes += len(res.trials) - 1
    print(f"healthy members: {len(well) * args.seeds} treated, {changes} changes proposed")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
