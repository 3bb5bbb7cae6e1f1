"""`graddoctor demo`: the whole story on the bundled digits data — measure, diagnose, treat, show."""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from rich.table import Table

from .. import data as data_mod
from .. import nets
from ..diagnose.api import diagnose
from ..errors import GradDoctorError
from ..nets import NetSpec
from ..probe.probe import watch
from ..remedies.treat import treat
from ..report.terminal import print_diagnosis
from ..store import RunStore
from ..training import TrainConfig, train
from .common import console, spec_flags
from .runs import add_wide_arg

EXAMPLE = """example:
  graddoctor demo                       # ~1 minute on 2 CPU cores; writes graddoctor-demo/
  graddoctor demo --depth 30 --epochs 5 --out /tmp/demo
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: a deep sigmoid MLP on digits, diagnosed and treated",
                       epilog=EXAMPLE, description=(
                           "Train a deep sigmoid MLP on the bundled digits data with graddoctor "
                           "watching, print the per-layer table and the verdict, find the fix with "
                           "treat, retrain the winner, and write the HTML report and figures."))
    p.add_argument("--depth", type=int, default=20, help="hidden layers (default 20)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10, help="epochs for the full runs (default 10)")
    p.add_argument("--budget-steps", type=int, default=60, help="treat's steps per candidate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="graddoctor-demo", help="output folder (default graddoctor-demo/)")
    p.add_argument("--store", default=None, help="run store (default OUT/runs.db)")
    add_wide_arg(p)
    p.set_defaults(run=run)


def _train_recorded(store: RunStore, spec: NetSpec, data, cfg: TrainConfig, seed: int,
                    kind: str = "train", parent: int | None = None) -> tuple[int, object]:
    """Train `spec` under watch(), writing the run to the store as it goes; returns (run id, diagnosis)."""
    run_id = store.start_run(spec.to_dict(), cfg.to_dict(), kind=kind, parent=parent)
    model = nets.build(spec, seed=seed)
    with watch(model) as probe, store.recorder(run_id, probe.trace) as rec:
        history = train(model, data, cfg, probe=probe, on_step=rec)
    diagnosis = diagnose(probe.trace)
    store.finish_run(run_id, "done", history, diagnosis)
    return run_id, (history, diagnosis)


def run(args: argparse.Namespace) -> int:
    from ..report.figures import render_all
    from ..report.html import write_report

    if args.epochs < 1 or args.depth < 1 or args.budget_steps < 2:
        raise GradDoctorError("--epochs and --depth must be >= 1, --budget-steps >= 2")
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = data_mod.digits(seed=args.seed)
    spec = NetSpec(depth=args.depth, width=args.width, in_shape=data.in_shape, out_features=data.n_classes,
                   activation="sigmoid", init="xavier_normal")
    cfg = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, epochs=args.epochs, seed=args.seed)
    with RunStore(args.store or out / "runs.db") as store:
        console.rule(f"[bold]1. measure[/bold]: {spec.summary()} on {data!r}")
        run_id, (hist, diagnosis) = _train_recorded(store, spec, data, cfg, args.seed)
        console.print(f"validation accuracy after {args.epochs} epochs: {hist.final_val_acc:.3f} "
                      f"(chance is 0.10)")
        console.rule("[bold]2. diagnose[/bold]: where the gradient dies, and why")
        print_diagnosis(diagnosis, console, wide=args.wide)
        console.rule(f"[bold]3. treat[/bold]: try the remedies, {args.budget_steps} steps each")
        result = treat(spec, data, diagnosis=diagnosis, budget_steps=args.budget_steps, seed=args.seed,
                       config=cfg)
        console.print(str(result), highlight=False, markup=False, soft_wrap=True)
        for trial in result.trials:
            row = trial.row()
            store.add_treatment(run_id, trial.label, {**row, "changes": [c.__dict__ for c in trial.changes]},
                                row["healthy_after"], row["loss"], row["val_acc"], row["seconds"])
        summary = Table("run", "network", "val acc", "verdict", title="the full runs")
        summary.add_row(f"#{run_id}", spec.summary(), f"{hist.final_val_acc:.3f}",
                        ", ".join(sorted(diagnosis.kinds())) or "healthy")
        compare: tuple[int, ...] = ()
        best = result.best
        if best is not None and best.patient.spec is not None:
            fixed_spec, fixed_cfg = best.patient.spec, best.patient.config
            console.rule(f"[bold]4. retrain the winner[/bold]: {best.label}")
            full = replace(fixed_cfg, max_steps=None, epochs=args.epochs)
            fixed_id, (fhist, fdiag) = _train_recorded(store, fixed_spec, data, full, args.seed,
                                                       kind="candidate", parent=run_id)
            compare = (fixed_id,)
            summary.add_row(f"#{fixed_id}", fixed_spec.summary(), f"{fhist.final_val_acc:.3f}",
                            ", ".join(sorted(fdiag.kinds())) or "healthy")
            console.print(f"re-run it yourself: graddoctor train {spec_flags(fixed_spec)} "
                          f"--lr {fixed_cfg.lr:g} --momentum {fixed_cfg.momentum:g} --epochs {args.epochs}",
                          highlight=False, soft_wrap=True)
        else:
            console.print("[yellow]no candidate fixed the problem within the budget; try --budget-steps 150[/yellow]")
        console.print(summary)
        console.rule("[bold]5. show[/bold]")
        report = write_report(store, run_id, out / "report.html", compare=compare)
        figures = render_all(store, run_id, out / "figures", compare=compare)
    console.print(f"report:  {report}", highlight=False, soft_wrap=True)
    console.print(f"figures: {out / 'figures'} ({len(figures)} files)", highlight=False, soft_wrap=True)
    console.print(f"runs:    {store.path}  (graddoctor runs --store {store.path})", highlight=False, soft_wrap=True)
    console.print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0
