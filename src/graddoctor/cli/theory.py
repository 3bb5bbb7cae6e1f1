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
  graddoctor theory --activation relu --init he_normal --depth 20 --width 256 --residual 2 --measure
  graddoctor theory --activation relu --init he_normal --batchnorm before_activation --batch-size 64
  graddoctor theory --kind cnn --image-size 8 --activation tanh --init xavier_normal --measure --batch-size 32
  graddoctor theory --activation tanh --init he_normal --figure tanh-phase.png

The prediction is for networks at initialisation with inputs of mean square --input-var
(1 for standardised data): plain and residual MLPs, BatchNorm MLPs (at --batch-size) and
CNNs. --measure builds real float64 networks (N(0,1) inputs, an isotropic output gradient)
and measures the same ratio, mean +- std over --seeds (--dtype is ignored: the ratios reach
1e-137, so measurement is always float64). --figure draws the phase diagram (plain MLPs,
CNNs), the ratio against depth for several branch scales (--residual) or the BatchNorm
gain per layer against batch size (--batchnorm).
"""
_PHASE = {"ordered": "ordered (gradient vanishes)", "critical": "critical (no exponential trend)",
          "chaotic": "chaotic (gradient explodes)"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("theory", help="predict vanishing/exploding gradients before training",
                       epilog=EXAMPLE,
                       description="Mean-field signal propagation at initialisation (Poole et al. "
                                   "2016; Schoenholz et al. 2017; residual: Yang & Schoenholz 2017; "
                                   "BatchNorm: Yang et al. 2019; CNN: Xiao et al. 2018): the predicted "
                                   "ratio of squared error-signal norms, first vs last hidden layer, "
                                   "with q*, chi_1, phase and depth scales where they apply.")
    add_net_args(p)
    g = p.add_argument_group("theory")
    g.add_argument("--in-features", type=int, default=None, help="input width (default: --width)")
    g.add_argument("--image-size", type=int, default=32, help="cnn: input images are 3 x N x N (default 32)")
    g.add_argument("--input-var", type=float, default=1.0,
                   help="mean squared input feature (default 1: standardised inputs)")
    g.add_argument("--measure", action="store_true", help="also measure on random networks at init")
    g.add_argument("--seeds", type=int, default=5, help="networks to measure (default 5)")
    g.add_argument("--batch-size", type=int, default=theory_measure.BATCH,
                   help=f"batch size: BatchNorm's statistics and the measurement (default {theory_measure.BATCH})")
    g.add_argument("--figure", metavar="FILE.png|svg",
                   help="write the phase diagram (or the residual / BatchNorm picture) with this network marked")
    g.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.set_defaults(run=run)


def spec_from_args(args: argparse.Namespace) -> NetSpec:
    """The NetSpec the flags describe (input width --in-features, default --width)."""
    n_in = args.in_features or args.width
    in_shape = (3, args.image_size, args.image_size) if args.kind == "cnn" else (n_in,)
    return NetSpec(kind=args.kind, depth=args.depth, width=args.width, in_shape=in_shape,
                   activation=args.activation, negative_slope=args.negative_slope, init=args.init,
                   batchnorm=args.batchnorm, residual=args.residual,
                   residual_scale=args.residual_scale)


def _fmt(x: float, unit: str = "") -> str:
    return "∞" if math.isinf(x) else ("n/a" if math.isnan(x) else f"{x:.4g}{unit}")


def run(args: argparse.Namespace) -> int:
    positive("input-var", args.input_var)
    n_in = 1 if args.in_features is None else args.in_features
    if min(args.seeds, args.batch_size, args.image_size, n_in) < 1:
        raise GradDoctorError("--seeds, --batch-size, --image-size and --in-features must be at least 1")
    if args.figure and not args.figure.lower().endswith((".png", ".svg")):
        raise GradDoctorError(f"--figure {args.figure!r} must end in .png or .svg")
    spec = spec_from_args(args)
    pred = theory.predict(spec, args.input_var, args.batch_size)
    if not pred.applicable:
        if args.json:
            print(json.dumps({"spec": spec.to_dict(), "applicable": False, "reason": pred.reason}))
        else:
            console.print(f"The theory does not apply to {spec.summary()}: {pred.reason}.")
        return 0
    measured = None
    if args.measure:
        values = []
        with progress.bar(args.seeds, "measuring") as bar:
            for seed in range(args.seeds):
                values.append(theory_measure.log10_ratio_one(spec, seed, args.batch_size))
                bar.update(1)
        measured = np.array(values)
    if args.figure:
        path = _figure(args.figure, spec, pred, args)
        if not args.json:
            console.print(f"wrote {path}")
    if args.json:
        print(json.dumps(_as_dict(spec, pred, measured), indent=2))
    else:
        console.print(f"[bold]{escape(spec.summary())}[/bold]: {escape(pred.reason)}", highlight=False)
        console.print(_table(spec, pred, measured, args.batch_size))
        console.print(_sentence(spec, pred), highlight=False)
    return 0


def _figure(path: str, spec: NetSpec, pred: theory.Prediction, args: argparse.Namespace):
    from ..report import theory_figures
    from ..theory import pictures

    if pred.family == "residual":
        return theory_figures.write_picture(path, "residual", pictures.residual_picture(spec, args.input_var))
    if pred.family == "batchnorm":
        return theory_figures.write_picture(path, "batchnorm", pictures.batchnorm_picture(spec, args.batch_size))
    mf = pred.mean_field
    diagram = theory.phase_diagram(spec.activation, negative_slope=spec.negative_slope)
    inits = theory.init_points(spec.activation, spec.width, spec.negative_slope)
    return theory_figures.write_figure(path, diagram, inits, (f"this net ({spec.init})", mf.sigma_w2, mf.sigma_b2))


def _table(spec: NetSpec, pred: theory.Prediction, measured: np.ndarray | None, batch: int) -> Table:
    mf = pred.mean_field
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    rows = []
    if mf is not None:
        where = "" if pred.family == "mlp" else " (an inner layer, fully connected)"
        rows += [(f"sigma_w^2, sigma_b^2{where}", f"{mf.sigma_w2:.4g}, {mf.sigma_b2:.4g}"),
                 ("q* (fixed point of the variance q_l)", _fmt(mf.q_star)),
                 ("chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]", f"{mf.chi1:.4g}"),
                 ("phase", _PHASE[mf.phase]),
                 ("gradient depth scale 1/|ln chi_1|", _fmt(mf.xi_grad, " layers")),
                 ("depth scale of q_l -> q*", _fmt(mf.xi_q, " layers"))]
    if pred.family == "batchnorm":
        rows.append((f"gain per layer deep in the stack (batch {batch})",
                     f"{pred.gain:.4g} for |d|^2, {math.sqrt(pred.gain):.4g} for |d|"))
    rows.append(("predicted log10 |d_1|^2 / |d_L|^2", f"{pred.log10_ratio:+.3f}  (layer-resolved)"))
    if pred.log10_ratio_fixed_point is not None:
        rows.append(("  fixed-point form", f"{pred.log10_ratio_fixed_point:+.3f}  ({spec.depth - 1} log10 chi_1)"))
    rows += [(f"  {name}", f"{value:+.3f}") for name, value in pred.contrast.items()]
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
            f"hidden layer (training moves the weights away from this picture).")


def _as_dict(spec: NetSpec, pred: theory.Prediction, measured: np.ndarray | None) -> dict:
    mf = pred.mean_field
    clean = lambda x: None if x is None or not math.isfinite(x) else x
    out = {"spec": spec.to_dict(), "applicable": True, "family": pred.family, "source": pred.reason,
           "predicted_log10_ratio": pred.log10_ratio, "fixed_point_log10_ratio": pred.log10_ratio_fixed_point,
           "gain_per_layer": clean(pred.gain), "contrast": pred.contrast,
           "layers": list(pred.layers), "profile": list(pred.profile)}
    if mf is not None:
        out.update(sigma_w2=mf.sigma_w2, sigma_b2=mf.sigma_b2, q_star=clean(mf.q_star), chi1=mf.chi1,
                   phase=mf.phase, depth_scale_grad=clean(mf.xi_grad), depth_scale_q=clean(mf.xi_q))
    if measured is not None:
        out["measured_log10_ratio"] = measured.tolist()
    return out
