"""Repair rate and cost of `graddoctor.treat` on real architectures, in each recipe's own step.

The zoo (tests/zoo.py): every planted pathology (sigmoid activations, weights x0.01 / x10, lr
x100, a post-LN encoder at a high lr without warmup, fp16 without a loss scaler, residuals
removed) is treated with the recipe's own `train_step` (a Hugging Face model's loss: causal
LM, masked LM, seq2seq, classification) and `make_optimizer` (AdamW), on its 4 fixed batches:

    treat(planted model, batches, train_step=..., make_optimizer=..., budget_steps=B, max_steps=S)

B steps per candidate (50: the steps the zoo's own judgement trains); the budget of the whole
treatment (baseline and candidates) is one plain run of the recipe: S = 5B steps and the
seconds those S steps took, measured in the same process right before (max_steps,
max_seconds). Reported per case:
- detected: treat's own diagnosis of the untreated run (its checkup at init plus its probed
  run of B steps) is not healthy: there is something to treat;
- repaired: treat found a fix (TreatResult.best: the treated finding gone at init and after
  the budget, no other gradient pathology, training loss below the untreated run's by
  treat.PAIRED_MARGIN, or by LOSS_MARGIN below the lowest it reached if it diverged);
- healthy level: the winner's loss after B steps within 20% of the healthy recipe's after B
  steps on the same batches (an independent check of the repair: the unmodified model);
- cost in optimizer steps: all steps treat trained / S (S: one training run of that budget);
- cost in wall time: treat's seconds / the seconds of S plain steps of the untreated recipe
  (zero_grad, loss, backward, optimizer step: the user's loop, unprobed), timed in the same
  process right before treat; the median plain step (ms) says which models count as >= 20 ms;
- where the fixed cost per candidate goes: seconds per stage, summed over candidates;
- why each case that is not repaired is not: not detected by the diagnosis, no applicable
  remedy, or the remedies tried did not fix it (each with its status and note).
The healthy zoo: treat on every healthy model must propose zero changes.
The corpus (tests/corpus.py, graddoctor's own nets on digits, the NetSpec path) as before.

The verdicts come from the diagnosis in this checkout (its commit is written to the results).
Writes docs/results/treat.json and docs/results/treat.md.

    python benchmarks/treat.py                        # zoo + corpus
    python benchmarks/treat.py --suite zoo --only gpt2   # cases whose name contains gpt2
    python benchmarks/treat.py --suite zoo --part healthy   # only the healthy zoo (zero changes?)
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import zoo  # noqa: E402
from corpus import HEALTHY, PATHOLOGICAL, _digits  # noqa: E402

import graddoctor as gd  # noqa: E402
from graddoctor import data as gd_data  # noqa: E402
from graddoctor.progress import bar  # noqa: E402

RESULTS = ROOT / "docs" / "results"
BUDGET = 50  # optimizer steps per candidate: as many as the zoo's judgement trains (zoo.judge)
TOTAL = 5  # S = TOTAL x BUDGET: the step budget of the whole treatment, and the reference run
HEALTHY_LEVEL = 1.2  # "healthy level": the winner's loss <= this x the healthy recipe's
SLOW_STEP_MS = 20.0  # wall-time cost is judged on models whose plain step takes at least this
STAGES = ("changes", "build", "screen", "pilot", "finish")


def tail_loss(losses: list[float]) -> float:
    """Mean of the last quarter of a run's step losses (inf if any is non-finite): treat's own measure."""
    if not losses or not all(math.isfinite(v) for v in losses):
        return math.inf
    tail = losses[-max(1, math.ceil(len(losses) / 4)):]
    return sum(tail) / len(tail)


def plain_run(recipe, seed: int, steps: int) -> tuple[list[float], list[float]]:
    """The user's loop, unprobed: (step losses, step seconds) of `steps` steps on the recipe's batches."""
    torch.manual_seed(seed)
    model = recipe.make(seed)
    batches = recipe.batches(seed, zoo.N_BATCHES)
    opt = recipe.make_optimizer(model.parameters())
    opt = opt[0] if isinstance(opt, tuple) else opt
    losses, times = [], []
    model.train()
    for i in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = recipe.train_step(model, batches[i % len(batches)])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        times.append(time.perf_counter() - t0)
    return losses, times


def treat_case(recipe, seed: int, budget: int, total: int, seconds: float | None = None) -> gd.remedies.TreatResult:
    """treat() in the recipe's own step, optimizer and batches, within `total` steps (and `seconds`)."""
    torch.manual_seed(seed)
    return gd.treat(recipe.make(seed), recipe.batches(seed, zoo.N_BATCHES), train_step=recipe.train_step,
                    make_optimizer=recipe.make_optimizer, budget_steps=budget, max_steps=total,
                    max_seconds=seconds, seed=seed, progress_bar=False)


def zoo_case(p, seed: int, budget: int) -> dict:
    """One planted case: the reference run, the healthy recipe's loss, treat; what the table needs."""
    total = TOTAL * budget
    _, ref_times = plain_run(p.model, seed, total)
    healthy = tail_loss(plain_run(zoo.get(p.base), seed, budget)[0])
    t0 = time.perf_counter()
    error = None
    try:
        r = treat_case(p.model, seed, budget, total, sum(ref_times))
    except Exception as exc:  # reported, never raised: the table must be complete
        r, error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    seconds = time.perf_counter() - t0
    row = {"case": p.name, "base": p.base, "half": p.model.half, "fault": p.fault, "seed": seed,
           "planted_kinds": sorted(p.kinds), "step_ms": 1000 * statistics.median(ref_times),
           "reference_seconds": sum(ref_times), "seconds": seconds, "healthy_loss": healthy, "error": error}
    if r is None:
        return {**row, "detected": False, "repaired": False, "healthy_level": False}
    best = r.best
    stages = {s: sum(t.timing.get(s, 0.0) for t in r.trials[1:]) for s in STAGES}
    row.update({
        "diagnosis": sorted(r.diagnosis.kinds()), "detected": not r.diagnosis.healthy, "repaired": best is not None,
        "best": best.label if best else None,
        "changes": [str(c) for c in best.changes] if best else [],
        "baseline_loss": r.baseline.loss, "best_loss": best.loss if best else None,
        "healthy_level": best is not None and best.loss <= HEALTHY_LEVEL * healthy,
        "tried": [(t.label, t.status, t.note) for t in r.trials[1:]],
        "steps": r.steps, "total_steps": total, "step_cost": r.steps / total,
        "wall_cost": seconds / sum(ref_times), "baseline_seconds": r.baseline.seconds, "stages": stages,
        "candidates_built": sum("build" in t.timing for t in r.trials[1:])})
    return row


def healthy_case(m, seed: int, budget: int) -> dict:
    """treat on a healthy zoo model: the changes it proposes (should be none)."""
    t0 = time.perf_counter()
    try:
        r = treat_case(m, seed, budget, TOTAL * budget)
        return {"model": m.name, "half": m.half, "diagnosis": sorted(r.diagnosis.kinds()),
                "candidates": len(r.trials) - 1, "fixed": r.best.label if r.best else None,
                "seconds": time.perf_counter() - t0, "error": None}
    except Exception as exc:  # reported in the table
        return {"model": m.name, "half": m.half, "diagnosis": [], "candidates": 0, "fixed": None,
                "seconds": time.perf_counter() - t0, "error": f"{type(exc).__name__}: {exc}"[:200]}


# -- the corpus (graddoctor's own networks on digits: the NetSpec / in-memory path) -------------
FULL_EPOCHS = 10  # a full digits run: 10 epochs, 230 SGD steps (TrainConfig's and the demo's default)


def corpus_data(case, seed: int) -> gd.Dataset:
    """The case's training data: digits (scaled like the case's batch), or the case's own batch."""
    _, x, y, _ = case.make(seed)
    if x.dim() in (2, 4) and x.shape[1:] in ((64,), (1, 8, 8)):
        d = gd_data.digits(seed=0, image=x.dim() == 4)
        scale = float(x.std() / _digits(x.dim() == 4)[0].std())  # the planted input scale (1 for most)
        return gd.Dataset(d.name, d.x_train * scale, d.y_train, d.x_val * scale, d.y_val, d.n_classes)
    return gd.from_tensors(x, y, seed=seed)


def full_run_seconds(model, data, config: gd.TrainConfig) -> tuple[float, bool]:
    """Wall time of one plain FULL_EPOCHS training run, and whether it diverged (and stopped)."""
    t0 = time.perf_counter()
    hist = gd.train(model, data, replace(config, epochs=FULL_EPOCHS, max_steps=None), progress_bar=False)
    return time.perf_counter() - t0, hist.diverged_at is not None


def corpus_case(case, seed: int, budget: int) -> dict:
    """Treat one corpus member (graddoctor's loop on digits); cost vs one full 10-epoch run.

    A full run that diverges stops at its first non-finite loss: then the full run of the
    winning network is timed instead (what the user would run).
    """
    data = corpus_data(case, seed)
    config = gd.TrainConfig(lr=case.lr, seed=seed)
    full, diverged = full_run_seconds(case.make(seed)[0], data, config)
    steps_full = FULL_EPOCHS * -(-len(data.x_train) // config.batch_size)
    r = gd.treat(lambda: case.make(seed)[0], data, config=config, budget_steps=budget, seed=seed,
                 progress_bar=False)
    if diverged and r.best is not None:
        full = full_run_seconds(r.best.patient.build(seed), data, r.best.patient.config)[0]
    return {"case": case.id, "kinds": sorted(case.kinds), "found": sorted(r.diagnosis.kinds()),
            "repaired": r.best is not None, "best": r.best.label if r.best else None,
            "step_cost": r.steps / steps_full, "wall_cost": r.seconds / full, "seconds": r.seconds}


def commit() -> str:
    """The checkout's commit (the diagnosis the verdicts came from)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _rate(rows: list[dict], key: str) -> str:
    n = sum(bool(r.get(key)) for r in rows)
    return f"{n}/{len(rows)} ({n / len(rows):.0%})" if rows else "-"


def _median(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return f"{statistics.median(xs):.2f}x" if xs else "-"


def why_not_repaired(row: dict) -> str:
    """The reason a planted case was not repaired: not detected, no applicable remedy, or none helped."""
    if row.get("error"):
        return f"treat raised {row['error']}"
    if not row.get("detected"):
        return "not detected by the diagnosis (treat's diagnosis of the untreated run is healthy: nothing to treat)"
    tried = row.get("tried", [])
    ran = [t for t in tried if t[1] not in ("not applicable", "not tried")]
    detail = "; ".join(f"{lab}: {st}" + (f" ({note})" if note else "") for lab, st, note in tried[:8])
    if not ran and not any(st == "not tried" for _, st, _ in tried):
        return "no applicable remedy: " + (detail or "the diagnosis names none")
    if not ran:
        return "over the budget before any candidate ran: " + detail
    return "the remedies tried did not fix it: " + detail


def markdown(res: dict) -> str:
    """The results as the docs page includes them."""
    z, lines = res["zoo"], []
    b = res["budget"]
    lines += [f"Budget: {b} optimizer steps per candidate, {TOTAL * b} for the whole treatment (the reference "
              f"run); diagnosis of commit `{res['commit']}`; {res['machine']}.", "",
              "| case | half | planted | diagnosis | best remedy | loss untreated -> treated (healthy) | "
              "steps | wall | step ms |", "|---|---|---|---|---|---|---|---|---|"]
    num = lambda x: "-" if x is None else ("inf" if not math.isfinite(x) else f"{x:.3g}")
    for r in z["planted"]:
        if r.get("error"):
            lines.append(f"| {r['case']} | {r['half']} | {r['fault']} | error: {r['error']} | | | | | |")
            continue
        loss = f"{num(r['baseline_loss'])} -> {num(r['best_loss'])} ({num(r['healthy_loss'])})"
        lines.append(f"| {r['case']} | {r['half']} | {r['fault']} | {', '.join(r['diagnosis']) or 'healthy'} | "
                     f"{r['best'] or 'not repaired'} | {loss} | {r['step_cost']:.2f}x | {r['wall_cost']:.2f}x | "
                     f"{r['step_ms']:.0f} |")
    lines += ["", "| summary | calibration | held-out | all |", "|---|---|---|---|"]
    halves = {h: [r for r in z["planted"] if r["half"] == h] for h in ("calibration", "held_out")}
    allp = z["planted"]
    detected = lambda rows: [r for r in rows if r.get("detected")]
    lines.append("| detected (treat's diagnosis is not healthy) | "
                 + " | ".join(_rate(v, "detected") for v in halves.values()) + f" | {_rate(allp, 'detected')} |")
    lines.append("| **repaired, of those detected** | " + " | ".join(_rate(detected(v), "repaired")
                                                               for v in halves.values())
                 + f" | **{_rate(detected(allp), 'repaired')}** |")
    lines.append("| repaired, of all planted | " + " | ".join(_rate(v, "repaired") for v in halves.values())
                 + f" | {_rate(allp, 'repaired')} |")
    lines.append(f"| reached the healthy recipe's loss (x{HEALTHY_LEVEL}) | "
                 + " | ".join(_rate(v, "healthy_level") for v in halves.values())
                 + f" | {_rate(allp, 'healthy_level')} |")
    hz = {h: [r for r in z["healthy"] if r["half"] == h] for h in ("calibration", "held_out")}
    changes = lambda rows: f"{sum(r['candidates'] > 0 for r in rows)} of {len(rows)}"
    lines.append("| healthy models with changes proposed | " + " | ".join(changes(v) for v in hz.values())
                 + f" | {changes(z['healthy'])} |")
    slow = [r for r in allp if not r.get("error") and r["step_ms"] >= SLOW_STEP_MS]
    fine = [r for r in allp if not r.get("error")]
    lines += ["", f"Cost (median over cases; 1.0x = one plain run of {TOTAL * b} steps): optimizer steps "
              f"{_median([r['step_cost'] for r in fine])} (max {max((r['step_cost'] for r in fine), default=0):.2f}x); "
              f"wall time {_median([r['wall_cost'] for r in fine])} for all, {_median([r['wall_cost'] for r in slow])} "
              f"(max {max((r['wall_cost'] for r in slow), default=0):.2f}x) on the {len(slow)} models whose plain "
              f"step is >= {SLOW_STEP_MS:.0f} ms."]
    tot = {s: sum(r["stages"][s] for r in fine) for s in STAGES}
    base = sum(r["baseline_seconds"] for r in fine)
    spent = base + sum(tot.values())
    if spent:
        lines.append("Where treat's time goes (all cases): untreated run (probed) "
                     f"{base / spent:.0%}, " + ", ".join(f"{s} {v / spent:.0%}" for s, v in tot.items()) + ".")
    missed = [r for r in allp if not r["repaired"]]
    if missed:
        lines += ["", "Not repaired, and why:"]
        lines += [f"- {r['case']} ({', '.join(r.get('diagnosis') or []) or 'healthy'}): {why_not_repaired(r)}"
                  for r in missed]
    wrong = [r for r in z["healthy"] if r["candidates"] or r.get("error")]
    if wrong:
        lines += ["", "Healthy models where treat proposed changes (a diagnosis false alarm treated):"]
        lines += [f"- {r['model']}: {', '.join(r['diagnosis'])}" + (f"; error {r['error']}" if r.get("error") else "")
                  + (f"; 'fixed' by {r['fixed']}" if r["fixed"] else "") for r in wrong]
    c = res.get("corpus") or []
    if c:
        lines += ["", f"The diagnosis corpus (graddoctor's own networks on digits, {res['corpus_budget']} steps "
                  f"per candidate; cost vs one full {FULL_EPOCHS}-epoch run): repaired {_rate(c, 'repaired')}; "
                  f"cost median {_median([r['step_cost'] for r in c])} in steps, "
                  f"{_median([r['wall_cost'] for r in c])} in wall time; healthy members: "
                  f"{res.get('corpus_healthy_changes', 0)} changes proposed."]
    return "\n".join(lines) + "\n"


def log(row: dict) -> None:
    """One finished case on stderr, as it finishes (a long run shows its results as it goes)."""
    keys = ("case", "model", "diagnosis", "best", "fixed", "candidates", "step_cost", "wall_cost", "step_ms", "error")
    print(json.dumps({k: row[k] for k in keys if k in row}, default=str), file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=("zoo", "corpus", "all"), default="all")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--budget", type=int, default=BUDGET, help="steps per candidate")
    ap.add_argument("--only", default="", help="comma-separated substrings of the case names to run")
    ap.add_argument("--part", choices=("planted", "healthy", "both"), default="both",
                    help="the zoo's planted cases, its healthy models, or both")
    ap.add_argument("--out", default=str(RESULTS / "treat"), help="results path without extension")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pick = lambda name: not args.only or any(s in name for s in args.only.split(","))
    t0 = time.perf_counter()
    res = {"budget": args.budget, "total": TOTAL * args.budget, "commit": commit(),
           "machine": f"{os.cpu_count()} CPU cores shared with other jobs, torch {torch.__version__}, 1 thread",
           "zoo": {"planted": [], "healthy": []}, "corpus": [], "corpus_budget": 60}
    if args.suite in ("zoo", "all"):
        planted = [p for p in zoo.PLANTED if pick(p.name)] if args.part != "healthy" else []
        healthy = [m for m in zoo.ZOO if m.expected == "healthy" and pick(m.name)] if args.part != "planted" else []
        with bar(len(planted) * args.seeds + len(healthy), "treat: zoo") as b:
            for seed in range(args.seeds):
                for p in planted:
                    b.update(0, case=p.name)
                    res["zoo"]["planted"].append(zoo_case(p, seed, args.budget))
                    log(res["zoo"]["planted"][-1])
                    b.update(1)
            for m in healthy:
                b.update(0, case=m.name)
                res["zoo"]["healthy"].append(healthy_case(m, 0, args.budget))
                log(res["zoo"]["healthy"][-1])
                b.update(1)
    if args.suite in ("corpus", "all"):
        sick = [c for c in PATHOLOGICAL if pick(c.id)]
        with bar(len(sick) * args.seeds, "treat: corpus") as b:
            for seed in range(args.seeds):
                for c in sick:
                    res["corpus"].append(corpus_case(c, seed, res["corpus_budget"]))
                    b.update(1)
        res["corpus_healthy_changes"] = sum(
            len(gd.treat(lambda: c.make(0)[0], corpus_data(c, 0), config=gd.TrainConfig(lr=c.lr),
                         budget_steps=res["corpus_budget"], progress_bar=False).trials) - 1
            for c in HEALTHY if pick(c.id) and c.id != "lstm-lm")
    res["seconds"] = time.perf_counter() - t0
    text = markdown(res)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    out.with_suffix(".md").write_text(text)
    print(f"wrote {out.with_suffix('.md')} and .json in {res['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
