"""`graddoctor theory`: the mean-field prediction of the gradient's fate at initialisation."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
from rich.markup import escape
from rich.table import Table

from .. import progress, theory
from ..errors import GradDoctorError
from ..nets import NetSpec
from ..theory import measure as theory_measure
from .common import add_net_args, console, positive

EXAMPLE = """examples:
  graddoctor theory --activation tanh --init xavier_normal --depth 50 --width 256
  graddoctor theory --activation relu --init he_normal --depth 50 --width 256 --measure --seeds 5
  graddoctor theory --activation tanh --init he_normal --figure tanh-phase.png

The prediction is for wide MLPs at initialisation with inputs of mean square --input-var
(1 for standardised data). --measure builds real float64 networks (N(0,1) inputs, an
isotropic output gradient) and measures the same ratio, mean +- std over --seeds
(--dtype is ignored: the ratios reach 1e-137, so measurement is always float64).
"""
_PHASE = {"ordered": "ordered (gradient vanishes)", "critical": "critical (no exponential trend)",
          "chaotic": "chaotic (gradient explodes)"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("theory", help="predict vanishing/exploding gradients before training",
                       epilog=EXAMPLE,
                       description="Mean-field signal propagation (Poole et al. 2016, Schoenholz et "
                                   "al. 2017): q*, chi_1, phase, depth scale and the predicted ratio "
                                   "of squared error-signal norms, first vs last hidden layer.")
    add_net_args(p)
    g = p.add_argument_group("theory")
    g.add_argument("--in-features", type=int, default=None, help="input width (default: --width)")
    g.add_argument("--input-var", type=float, default=1.0,
                   help="mean squared input feature (default 1: standardised inputs)")
    g.add_argument("--measure", action="store_true", help="also measure on random networks at init")
    g.add_argument("--seeds", type=int, default=5, help="networks to measure (default 5)")
    g.add_argument("--batch-size", type=int, default=theory_measure.BATCH,
                   help=f"inputs per measured network (default {theory_measure.BATCH})")
    g.add_argument("--figure", metavar="FILE.png|svg",
                   help="write the phase diagram of this activation with this network marked")
    g.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.set_defaults(run=run)


def spec_from_args(args: argparse.Namespace) -> NetSpec:
    """The NetSpec the flags describe (input width --in-features, default --width)."""
    n_in = args.in_features or args.width
    in_shape = (3, 32, 32) if args.kind == "cnn" else (n_in,)
    return NetSpec(kind=args.kind, depth=args.depth, width=args.width, in_shape=in_shape,
                   activation=args.activation, negative_slope=args.negative_slope, init=args.init,
                   batchnorm=args.batchnorm, residual=args.residual,
                   residual_scale=args.residual_scale)


def _fmt(x: float, unit: str = "") -> str:
    return "∞" if math.isinf(x) else ("n/a" if math.isnan(x) else f"{x:.4g}{unit}")


def run(args: argparse.Namespace) -> int:
    positive("input-var", args.input_var)
    if args.seeds < 1 or args.batch_size < 1 or (args.in_features is not None and args.in_features < 1):
        raise GradDoctorError("--seeds, --batch-size and --in-features must be at least 1")
    if args.figure and not args.figure.lower().endswith((".png", ".svg")):
        raise GradDoctorError(f"--figure {args.figure!r} must end in .png or .svg")
    spec = spec_from_args(args)
    pred = theory.predict(spec, args.input_var)
    if not pred.applicable:
        if args.json:
            print(json.dumps({"spec": spec.to_dict(), "applicable": False, "reason": pred.reason}))
        else:
            console.print(f"The mean-field theory does not apply to {spec.summary()}: {pred.reason}.")
        return 0
    measured = None
    if args.measure:
        values = []
        with progress.bar(args.seeds, "measuring") as bar:
            for seed in range(args.seeds):
                values.append(theory_measure.log10_ratio_one(spec, seed, args.batch_size))
                bar.update(1)
        measured = np.array(values)
    mf = pred.mean_field
    if args.figure:
        from ..report import theory_figures

        diagram = theory.phase_diagram(spec.activation, negative_slope=spec.negative_slope)
        inits = theory.init_points(spec.activation, spec.width, spec.negative_slope)
        path = theory_figures.write_figure(args.figure, diagram, inits,
                                           (f"this net ({spec.init})", mf.sigma_w2, mf.sigma_b2))
        if not args.json:
            console.print(f"wrote {path}")
    if args.json:
        print(json.dumps(_as_dict(spec, pred, measured), indent=2))
    else:
        console.print(f"[bold]{spec.summary()}[/bold]: sigma_w^2 = {pred.mean_field.sigma_w2:.4g}, "
                      f"sigma_b^2 = {pred.mean_field.sigma_b2:.4g}")
        console.print(_table(spec, pred, measured))
        console.print(_sentence(spec, pred), highlight=False)
    return 0


def _table(spec: NetSpec, pred: theory.Prediction, measured: np.ndarray | None) -> Table:
    mf = pred.mean_field
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    rows = [("q* (fixed point of the variance q_l)", _fmt(mf.q_star)),
            ("chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]", f"{mf.chi1:.4g}"),
            ("phase", _PHASE[mf.phase]),
            ("gradient depth scale 1/|ln chi_1|", _fmt(mf.xi_grad, " layers")),
            ("depth scale of q_l -> q*", _fmt(mf.xi_q, " layers")),
            ("predicted log10 |d_1|^2 / |d_L|^2", f"{pred.log10_ratio:+.3f}  (product of chi(q_l))"),
            ("  fixed-point form", f"{pred.log10_ratio_fixed_point:+.3f}  ({spec.depth - 1} log10 chi_1)")]
    if measured is not None:
        rows += [(f"measured ({len(measured)} seeds, mean ± std)",
                  f"{measured.mean():+.3f} ± {measured.std():.3f}"),
                 ("measured - predicted", f"{measured.mean() - pred.log10_ratio:+.3f} decades")]
    for label, value in rows:
        t.add_row(escape(label), escape(value))
    return t


def _sentence(spec: NetSpec, pred: theory.Prediction) -> str:
    r = pred.log10_ratio
    change = (f"keeps its size (10^{r:+.2f})" if abs(r) < 0.05 else
              f"{'shrinks' if r < 0 else 'grows'} by 10^{abs(r):.1f}")
    return (f"At initialisation the squared error signal {change} from the last to the first "
            f"hidden layer (wide-network limit; training moves the weights away from this picture).")


def _as_dict(spec: NetSpec, pred: theory.Prediction, measured: np.ndarray | None) -> dict:
    mf = pred.mean_field
    clean = lambda x: None if not math.isfinite(x) else x
    out = {"spec": spec.to_dict(), "applicable": True, "sigma_w2": mf.sigma_w2, "sigma_b2": mf.sigma_b2,
           "q_star": clean(mf.q_star), "chi1": mf.chi1, "phase": mf.phase,
           "depth_scale_grad": clean(mf.xi_grad), "depth_scale_q": clean(mf.xi_q),
           "predicted_log10_ratio": pred.log10_ratio,
           "fixed_point_log10_ratio": pred.log10_ratio_fixed_point}
    if measured is not None:
        out["measured_log10_ratio"] = measured.tolist()
    return out
