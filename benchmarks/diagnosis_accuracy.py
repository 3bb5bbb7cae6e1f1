"""Diagnosis accuracy on the calibration corpus (tests/corpus.py), at init and after training.

Prints, for the network as built (checkup steps=0) and after 50 SGD steps (momentum 0.9,
the case's learning rate, one digits batch): detection rate on the pathological members
(planted kinds all found; for exploding, a non-finite verdict counts — it is where an
explosion ends), false-alarm rate on the healthy members, localisation accuracy (the
planted layer named as where the gain drops/jumps most) and whether a named cause is in the
top two. Training-only pathologies (a too-high learning rate) are not counted at init;
defects that training repairs by itself (a bottleneck layer relearns its scale) are reported
apart after training.

    python benchmarks/diagnosis_accuracy.py [--seeds 3]

Writes docs/results/diagnosis_accuracy.md (the table the docs include) and .json.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from corpus import CORPUS

import graddoctor as gd
from graddoctor.progress import bar

STEPS = 50
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def judge(case, d) -> dict:
    """Score one diagnosis against the case's truth."""
    kinds = d.kinds()
    if case.healthy:
        return {"ok": d.healthy, "cause": None, "local": None, "kinds": kinds}
    want = set(case.kinds)
    if "exploding" in want and "non_finite" in kinds:
        kinds = kinds | {"exploding"}
    found = [f for f in d.findings if f.kind in want or (f.kind == "non_finite" and "exploding" in want)]
    top2 = {c.name for f in found for c in f.causes[:2]}
    local = None
    if case.planted:
        local = any(f.evidence.get("worst_gain_layer") == case.planted for f in found)
    return {"ok": want <= kinds, "cause": bool(top2 & set(case.causes)), "local": local, "kinds": kinds}


def run(seeds: int) -> None:
    torch.set_num_threads(1)
    rows = {"init": [], "trained": []}
    healed = []  # planted defects that training repairs by itself: judged after training
    t0 = time.perf_counter()
    with bar(len(CORPUS) * seeds * 2, "diagnosing corpus") as b:
        for seed in range(seeds):
            for case in CORPUS:
                model, x, y, loss = case.make(seed)
                if case.at_init:
                    rows["init"].append((case, judge(case, gd.checkup(model, x, y, loss_fn=loss))))
                b.update(1)
                opt = torch.optim.SGD(model.parameters(), lr=case.lr, momentum=0.9)
                d = gd.checkup(model, x, y, loss_fn=loss, steps=STEPS, optimizer=opt)
                if case.trains_away:
                    healed.append((case.id, d.healthy))
                else:
                    rows["trained"].append((case, judge(case, d)))
                b.update(1)
    seconds = time.perf_counter() - t0
    frac = lambda xs: f"{sum(xs)}/{len(xs)} {100 * sum(xs) / max(len(xs), 1):.0f}%"
    lines = [f"corpus: {sum(not c.healthy for c in CORPUS)} pathological + {sum(c.healthy for c in CORPUS)} "
             f"healthy models, seeds 0..{seeds - 1}, {seconds:.0f} s", "",
             f"{'phase':<10}{'detection':>14}{'false alarms':>16}{'cause top-2':>14}{'localised':>12}"]
    summary = {}
    for phase, rs in rows.items():
        sick = [r for c, r in rs if not c.healthy]
        well = [r for c, r in rs if c.healthy]
        loc = [r["local"] for r in sick if r["local"] is not None]
        cols = ([r["ok"] for r in sick], [not r["ok"] for r in well], [bool(r["cause"]) for r in sick], loc)
        summary[phase] = {k: [sum(c), len(c)] for k, c in zip(("detection", "false_alarms", "cause_top2", "localised"),
                                                                cols)}
        lines.append(f"{phase:<10}" + "".join(f"{frac(c):>{w}}" for c, w in zip(cols, (14, 16, 14, 12))))
    if healed:
        lines += ["", f"healed by training (e.g. a bottleneck layer relearns its scale), judged healthy "
                  f"after {STEPS} steps: {sum(h for _, h in healed)}/{len(healed)} "
                  f"({', '.join(sorted({i for i, _ in healed}))})"]
    misses = [(p, c.id, sorted(r["kinds"])) for p, rs in rows.items() for c, r in rs
              if not r["ok"] or r["cause"] is False or r["local"] is False]
    if misses:
        lines += ["", "misses (phase, case, kinds found):"] + [f"   {p} {i} {k}" for p, i, k in misses]
    text = "\n".join(lines)
    print("\n" + text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "diagnosis_accuracy.md").write_text(
        "```text\n$ python benchmarks/diagnosis_accuracy.py --seeds " + str(seeds) + "\n" + text + "\n```\n")
    (RESULTS / "diagnosis_accuracy.json").write_text(json.dumps(
        {"seeds": seeds, "seconds": seconds, "phases": summary, "healed": healed,
         "misses": [list(m) for m in misses]}, indent=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    run(ap.parse_args().seeds)
