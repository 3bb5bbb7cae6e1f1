"""Theory vs measurement: log10 ||delta_1||^2 / ||delta_L||^2 at initialisation, per family.

For each configuration: the prediction (graddoctor.predict) and the measurement on real
float64 networks (graddoctor.theory.measure: N(0, 1) inputs, isotropic output gradient),
mean of log10 over seeds 0..4; error = measured - predicted, in decades. Families:

  mlp        issue 7's 27 networks: width 256, depths 10/20/50, sigmoid/tanh/relu,
             inits small/xavier_normal/he_normal; --seed-sets K also measures K disjoint sets
             of 5 seeds (seeds 0..5K-1) and reports each configuration's worst set
  residual   width 256, depths 10/20/50, relu/tanh, He/Xavier, a skip every k in {1, 2}
             layers, branch scale 1 and 1/sqrt(blocks); the wide limit beside it
  batchnorm  width 256, batch 64, the same depths/activations/inits, BN before and after the
             activation, plus residual BN stacks (k = 2, scales 1 and 1/sqrt(blocks))
  cnn        64 channels, 8x8 images, batch 32, depths 10/20/50, relu/tanh, He/Xavier;
             the fully connected form (no zero-padding borders) beside it

Target (issue 20): |error| <= 0.3 decades everywhere. Writes docs/results/theory.json and
docs/results/theory.md, and puts the markdown into docs/theory.md between its
<!-- results:theory --> markers.

    python benchmarks/theory.py [--seeds 5] [--seed-sets 4] [--families mlp,residual,...]
                                [--figure docs/theory-phase.png] [--render]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch

from graddoctor import theory
from graddoctor.nets import NetSpec
from graddoctor.progress import bar
from graddoctor.theory import measure

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PAGE = ROOT / "docs" / "theory.md"
MARK = ("<!-- results:theory -->", "<!-- /results:theory -->")
TARGET = 0.3  # decades (issue 20; issue 19's agreement bar)
TARGET_MLP = 0.2  # issue 7's bar for the 27 plain MLPs (5 seeds 0..4)
WIDTH, DEPTHS = 256, (10, 20, 50)
BN_BATCH, CNN = 64, dict(width=64, in_shape=(3, 8, 8), batch=32)


def _blocks_scale(depth: int, k: int) -> float:
    return 1.0 / math.sqrt(math.ceil(depth / k))


def configs(fam: str) -> list[tuple[NetSpec, int]]:
    """(spec, batch) of every configuration of one family."""
    mlp = dict(width=WIDTH, in_shape=(WIDTH,))
    nets = [("relu", "he_normal"), ("relu", "xavier_normal"), ("tanh", "he_normal"), ("tanh", "xavier_normal")]
    if fam == "mlp":
        return [(NetSpec(depth=d, activation=a, init=i, **mlp), measure.BATCH)
                for a in ("sigmoid", "tanh", "relu") for i in ("small", "xavier_normal", "he_normal")
                for d in DEPTHS]
    if fam == "residual":
        return [(NetSpec(depth=d, activation=a, init=i, residual=k, residual_scale=s, **mlp), measure.BATCH)
                for a, i in nets for k in (1, 2) for d in DEPTHS for s in (1.0, _blocks_scale(d, k))]
    if fam == "batchnorm":
        plain = [(NetSpec(depth=d, activation=a, init=i, batchnorm=bn, **mlp), BN_BATCH)
                 for bn in ("before_activation", "after_activation") for a, i in nets for d in DEPTHS]
        res = [(NetSpec(depth=d, activation="relu", init="he_normal", batchnorm=bn, residual=2,
                        residual_scale=s, **mlp), BN_BATCH)
               for bn in ("before_activation", "after_activation") for d in DEPTHS
               for s in (1.0, _blocks_scale(d, 2))]
        return plain + res
    if fam == "cnn":
        return [(NetSpec(kind="cnn", depth=d, activation=a, init=i, width=CNN["width"],
                         in_shape=CNN["in_shape"]), CNN["batch"]) for a, i in nets for d in DEPTHS]
    raise SystemExit(f"unknown family {fam!r}; choose from mlp, residual, batchnorm, cnn")


def evaluate(fam: str, seeds: int, seed_sets: int = 1) -> list[dict]:
    """One row per configuration: predicted, measured mean +- std over seeds, contrasts."""
    rows, todo = [], configs(fam)
    sets = seed_sets if fam == "mlp" else 1
    with bar(len(todo), f"theory: {fam}") as progress:
        for spec, batch in todo:
            p = theory.predict(spec, batch=batch)
            values = measure.log10_ratio(spec, seeds * sets, batch)
            means = values.reshape(sets, seeds).mean(axis=1) - p.log10_ratio
            row = {"family": fam, "config": spec.summary(), "activation": spec.activation,
                   "init": spec.init, "depth": spec.depth, "batch": batch, "residual": spec.residual,
                   "residual_scale": spec.residual_scale, "batchnorm": spec.batchnorm,
                   "predicted": p.log10_ratio, "measured": float(values[:seeds].mean()),
                   "std": float(values[:seeds].std()), "contrast": p.contrast}
            row["error"] = row["measured"] - row["predicted"]
            if p.log10_ratio_fixed_point is not None:
                row["contrast"] = {"fixed point (L-1) log10 chi_1": p.log10_ratio_fixed_point}
            if sets > 1:
                row.update(worst_set=float(means[np.argmax(np.abs(means))]),
                           sets_missed=int((np.abs(means) > TARGET_MLP).sum()),
                           all_seeds=float(values.mean() - p.log10_ratio))
            rows.append(row)
            progress.update(1)
    return rows


def _label(r: dict) -> str:
    parts = [r["activation"], r["init"].removesuffix("_normal"), f"depth {r['depth']}"]
    if r["batchnorm"] != "none":
        parts.append(r["batchnorm"].replace("_activation", ""))
    if r["residual"]:
        parts.append(f"k={r['residual']}, a={r['residual_scale']:.3g}")
    return ", ".join(parts)


def markdown(rows: list[dict], seeds: int, seed_sets: int) -> str:
    """The per-family tables and the worst errors, as docs/theory.md shows them."""
    out = []
    for fam in dict.fromkeys(r["family"] for r in rows):
        fr = [r for r in rows if r["family"] == fam]
        extra = list(fr[0]["contrast"])
        head = "| configuration | batch | predicted | measured (mean ± std) | error |"
        head += "".join(f" {c} |" for c in extra)
        out += [f"**{fam}** ({len(fr)} configurations, {seeds} seeds each, float64; decades)", "",
                head, "|" + "---|" * (5 + len(extra))]
        for r in fr:
            out.append(f"| {_label(r)} | {r['batch']} | {r['predicted']:+.3f} | {r['measured']:+.3f} ± "
                       f"{r['std']:.3f} | {r['error']:+.3f} |" + "".join(f" {r['contrast'][c]:+.3f} |" for c in extra))
        errs = np.abs([r["error"] for r in fr])
        worst = fr[int(np.argmax(errs))]
        bars = (TARGET_MLP, TARGET) if fam == "mlp" else (TARGET,)
        within = " and ".join(f"{int((errs <= t).sum())}/{len(fr)} within {t}" for t in bars)
        out += ["", f"Worst |error| for {fam}: **{errs.max():.3f}** decades ({_label(worst)}); {within}.", ""]
        if fam == "mlp" and seed_sets > 1:
            ws = np.abs([r["worst_set"] for r in fr])
            w = fr[int(np.argmax(ws))]
            out += [f"Over {seed_sets} disjoint sets of {seeds} seeds (seeds 0-{seeds * seed_sets - 1}): worst "
                    f"set |error| **{ws.max():.3f}** ({_label(w)}); {int((ws <= TARGET_MLP).sum())}/{len(fr)} "
                    f"configurations within {TARGET_MLP} in every set, {int((ws <= TARGET).sum())}/{len(fr)} "
                    f"within {TARGET}.", ""]
    return "\n".join(out).rstrip() + "\n"


def write(rows: list[dict], seeds: int, seed_sets: int) -> str:
    """docs/results/theory.{json,md}, and the page's results block."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, seeds, seed_sets)
    meta = {"seeds": seeds, "seed_sets": seed_sets, "target_decades": TARGET, "torch": torch.__version__}
    (RESULTS / "theory.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (RESULTS / "theory.md").write_text(md)
    page = PAGE.read_text()
    if MARK[0] in page:
        block = f"{MARK[0]}\n{md}{MARK[1]}"
        PAGE.write_text(re.sub(re.escape(MARK[0]) + ".*?" + re.escape(MARK[1]), lambda _m: block, page, flags=re.S))
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed-sets", type=int, default=4, help="disjoint seed sets for the mlp family")
    ap.add_argument("--families", default="mlp,residual,batchnorm,cnn")
    ap.add_argument("--figure", help="write the phase diagram + predicted-vs-measured figure here")
    ap.add_argument("--render", action="store_true",
                    help="re-render the markdown and the page from docs/results/theory.json (no measuring)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.render:
        saved = json.loads((RESULTS / "theory.json").read_text())
        print(write(saved["rows"], saved["meta"]["seeds"], saved["meta"]["seed_sets"]))
        return
    rows = [r for fam in args.families.split(",") for r in evaluate(fam, args.seeds, args.seed_sets)]
    print(write(rows, args.seeds, args.seed_sets))
    print(f"({time.perf_counter() - t0:.0f} s; wrote docs/results/theory.json and theory.md)")
    if args.figure:
        from graddoctor.report import theory_figures

        mlp = [r for r in rows if r["family"] == "mlp"]
        path = theory_figures.write_figure(args.figure, theory.phase_diagram("tanh"),
                                           theory.init_points("tanh", WIDTH), comparison=mlp or rows)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
