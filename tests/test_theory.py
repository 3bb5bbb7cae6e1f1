"""Mean-field theory: quadrature vs an mpmath oracle, fixed points, the layer-resolved prediction
against real float64 networks (issue 7's accuracy target), residual / BatchNorm / CNN networks
(issue 20) against float64 measurements over seeds, the CLI and the figures."""
import contextlib
import io
import json
import math
import re
from pathlib import Path

import mpmath as mp
import numpy as np
import pytest
import torch
from conftest import need

from graddoctor import GradDoctorError, activations, nets, theory
from graddoctor.cli import main
from graddoctor.nets import NetSpec
from graddoctor.theory import batchnorm, stack
from graddoctor.theory import measure as theory_measure
from graddoctor.theory import plan as plan_mod

THEORY_PAGE = Path(__file__).resolve().parents[1] / "docs" / "theory.md"
WIDTH = 256
TARGET = 0.2  # decades, issue 7


# -- quadrature -------------------------------------------------------------------------
def _sig(x):
    return 1 / (1 + mp.exp(-x))


_SELU_A, _SELU_L = mp.mpf("1.6732632423543772848170429916717"), mp.mpf("1.0507009873554804934193349852946")
# Independent oracle: phi and phi' written in mpmath (20 digits), integrated adaptively.
ORACLE = {
    "sigmoid": (_sig, lambda x: _sig(x) * (1 - _sig(x))),
    "tanh": (mp.tanh, lambda x: mp.sech(x) ** 2),
    "relu": (lambda x: max(x, 0), lambda x: 1 if x > 0 else 0),
    "elu": (lambda x: x if x > 0 else mp.expm1(x), lambda x: 1 if x > 0 else mp.exp(x)),
    "gelu": (lambda x: x * mp.ncdf(x), lambda x: mp.ncdf(x) + x * mp.npdf(x)),
    "silu": (lambda x: x * _sig(x), lambda x: _sig(x) * (1 + x * (1 - _sig(x)))),
    "selu": (lambda x: _SELU_L * (x if x > 0 else _SELU_A * mp.expm1(x)),
             lambda x: _SELU_L * (1 if x > 0 else _SELU_A * mp.exp(x))),
}  # leaky_relu, prelu, identity: closed forms below


def _oracle_expect(f, q: float) -> float:
    mp.mp.dps = 20
    s = mp.sqrt(q)
    pts = [-mp.inf] + [k / s for k in (-30, -3, 0, 3, 30)] + [mp.inf]  # resolve narrow features
    return float(mp.quad(lambda z: f(s * z) ** 2 * mp.npdf(z), pts))


@pytest.mark.parametrize("name", sorted(ORACLE))
@pytest.mark.parametrize("q", [1e-4, 0.7, 30.0, 1e6])
def test_gaussian_expectations_match_mpmath_to_1e_8(name, q):
    act = activations.get(name)
    phi, dphi = ORACLE[name]
    got_phi = float(theory.gauss_expect(lambda x: act.fn(x, 0.01) ** 2, q))
    got_dphi = float(theory.gauss_expect(lambda x: act.deriv(x, 0.01) ** 2, q))
    assert got_phi == pytest.approx(_oracle_expect(phi, q), rel=1e-8)
    assert got_dphi == pytest.approx(_oracle_expect(dphi, q), rel=1e-8)


def test_closed_forms_relu_leaky_identity():
    q = np.array([1e-150, 1e-6, 1.0, 1e6, 1e150])
    assert np.allclose(theory.chi("relu", q, 3.0), 1.5, rtol=1e-13)  # chi_1 = sigma_w^2 / 2
    assert np.allclose(theory.q_map("relu", q, 3.0, 0.1), 1.5 * q + 0.1, rtol=1e-13)
    assert np.allclose(theory.chi("leaky_relu", q, 2.0, 0.2), 1.04, rtol=1e-13)  # (1 + a^2)
    assert np.allclose(theory.q_map("identity", q, 0.5), 0.5 * q, rtol=1e-13)


# -- fixed points, phases, depth scales ---------------------------------------------------
def test_tanh_without_bias_is_critical_exactly_at_sigma_w2_one():
    below, at, above = (theory.mean_field("tanh", s) for s in (0.9, 1.0, 1.1))
    assert below.q_star == 0 and below.chi1 == pytest.approx(0.9) and below.phase == "ordered"
    assert at.q_star == 0 and at.chi1 == pytest.approx(1.0) and at.phase == "critical"
    assert math.isinf(at.xi_grad)
    assert above.q_star > 0.05 and above.chi1 > 1 and above.phase == "chaotic"
    assert float(theory.q_map("tanh", above.q_star, 1.1)) == pytest.approx(above.q_star, rel=1e-10)
    d = theory.phase_diagram("tanh", np.linspace(0.9, 1.1, 21), [0.0])
    crossing = np.interp(0.0, np.log(d["chi1"][0]), d["sigma_w2"])
    assert crossing == pytest.approx(1.0, abs=1e-9)


def test_tanh_critical_line_at_sigma_b2_0_05():
    # Reference 1.76095463961: the same two equations (q* = F(q*), chi_1 = 1) solved with mpmath
    # findroot + quad at 20 digits; Schoenholz et al. (2017) Fig. 1 shows ~1.76.
    sw2 = np.linspace(1.7, 1.8, 101)
    d = theory.phase_diagram("tanh", sw2, [0.05])
    assert np.interp(0.0, np.log(d["chi1"][0]), sw2) == pytest.approx(1.76095463961, abs=1e-6)


def test_relu_fixed_points_and_depth_scale():
    mf = theory.mean_field("relu", 1.5, 0.1)
    assert mf.q_star == pytest.approx(0.1 / (1 - 0.75), rel=1e-10)
    assert mf.chi1 == pytest.approx(0.75) and mf.xi_grad == pytest.approx(1 / math.log(1 / 0.75))
    assert math.isinf(theory.mean_field("relu", 3.0).q_star)  # grows without bound
    assert theory.mean_field("relu", 2.0).phase == "critical"  # He init
    assert theory.mean_field("relu", 1.0).q_star == 0


def test_near_critical_tanh_needs_the_layer_resolved_product():
    q = theory.q_trajectory("tanh", 1.0, [1.0] * 999, [0.0] * 999)
    assert q[999] * 2 * 1000 == pytest.approx(1.0, rel=0.01)  # q_l ~ 1/(2l): a power law
    p = theory.predict(NetSpec(depth=50, width=WIDTH, in_shape=(WIDTH,), activation="tanh",
                               init="xavier_normal"))
    assert p.log10_ratio_fixed_point == pytest.approx(0.0, abs=1e-9)
    assert p.log10_ratio < -1.5  # off by more than a decade from (L-1) log10 chi_1


def test_prediction_indexes_layers_and_fans():
    # depth 2: one step delta_2 -> delta_1, chi(q_1) with layer 2's sigma_w^2; q_1 from layer 1's
    spec = NetSpec(depth=2, width=128, in_shape=(32,), activation="tanh", init="xavier_normal")
    p = theory.predict(spec, input_var=2.0)
    sw1, sw2 = 2 * 32 / (32 + 128), 1.0
    assert p.q[0] == pytest.approx(sw1 * 2.0)
    assert p.log10_ratio == pytest.approx(math.log10(float(theory.chi("tanh", sw1 * 2.0, sw2))))


@pytest.mark.parametrize("change,batch,names", [
    (dict(kind="cnn", in_shape=(3, 8, 8), batchnorm="before_activation"), 64, "BatchNorm2d"),
    (dict(depth=1), 64, "depth must be at least 2"),
    (dict(batchnorm="after_activation"), 4, f"batch of at least {batchnorm.MIN_BATCH} (got 4)"),
    (dict(batchnorm="after_activation"), 7, "(got 7)")], ids=["cnn-batchnorm", "depth-1", "batch-4", "batch-7"])
def test_no_prediction_where_the_theory_does_not_apply(change, batch, names):
    """The reason names the field that puts the net outside the theory (and the value it got)."""
    p = theory.predict(NetSpec(**change), batch=batch)
    assert p.log10_ratio is None and not p.applicable and names in p.reason, p.reason


# -- measurement ---------------------------------------------------------------------------
def test_measurement_matches_a_plain_autograd_pass_through_the_model():
    spec = NetSpec(depth=4, width=32, in_shape=(16,), activation="tanh", init="xavier_normal")
    got = theory_measure.log10_ratio_one(spec, seed=3, batch=8)
    model = nets.build(spec.with_(dtype="float64"), seed=3)
    keep = []

    def hook(module, inputs, output):
        output.retain_grad()
        keep.append(output)

    hooks = [layer.linear.register_forward_hook(hook) for layer in model.body]
    gen = torch.Generator().manual_seed(3 + theory_measure.DATA_SEED_OFFSET)
    x = torch.randn(8, 16, generator=gen, dtype=torch.float64)
    r = torch.randn(8, 10, generator=gen, dtype=torch.float64)
    (model(x) * r).sum().backward()
    for h in hooks:
        h.remove()
    want = math.log10(keep[0].grad.square().sum() / keep[-1].grad.square().sum())
    assert got == pytest.approx(want, rel=1e-12)


@pytest.fixture(scope="module")
def accuracy_rows():
    rows = []
    for act in ("sigmoid", "tanh", "relu"):
        for init in ("small", "xavier_normal", "he_normal"):
            for depth in (10, 20, 50):
                spec = NetSpec(depth=depth, width=WIDTH, in_shape=(WIDTH,), activation=act, init=init)
                values = theory_measure.log10_ratio(spec, seeds=5)
                rows.append((spec.summary(), theory.predict(spec).log10_ratio, values))
    return rows


def test_issue_7_accuracy_target_every_configuration_within_0_2_decades(accuracy_rows):
    # 27 configurations x seeds 0..4 (~10 s). Other seed sets: see the next test.
    errors = {name: values.mean() - pred for name, pred, values in accuracy_rows}
    bad = {k: round(v, 3) for k, v in errors.items() if abs(v) > TARGET}
    assert not bad, bad
    assert len(errors) == 27


def test_relu_depth_50_within_0_3_decades_on_every_seed_set(accuracy_rows):
    # ReLU at depth 50 has a per-seed spread of ~0.25 decades (finite width), so some sets of 5
    # seeds miss issue 7's 0.2 there (benchmarks/theory.py --seed-sets); 0.3 is the bound the
    # seed sets support. Seeds 5-19 here: 3 more sets per configuration.
    errors = []
    for name, pred, first in accuracy_rows:
        if name.startswith("50x256 relu"):
            spec = NetSpec(depth=50, width=WIDTH, in_shape=(WIDTH,), init=name.split("init=")[1].split(",")[0])
            rest = np.array([theory_measure.log10_ratio_one(spec, s) for s in range(5, 20)])
            errors += list(np.concatenate([first, rest]).reshape(4, 5).mean(axis=1) - pred)
    assert len(errors) == 12 and max(abs(e) for e in errors) <= 0.3, np.round(errors, 3)


def test_fixed_point_form_misses_where_the_layer_resolved_one_does_not(accuracy_rows):
    _name, pred, values = next(r for r in accuracy_rows if r[0].startswith("50x256 tanh")
                              and "xavier" in r[0])
    assert abs(values.mean() - 0.0) > 1.0 > 0.2 >= abs(values.mean() - pred)


# -- CLI and figure ---------------------------------------------------------------------------
def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _rows(out: str) -> dict[str, str]:
    """The CLI table as {label: value} (its two columns are 2+ spaces apart; prose lines have none)."""
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines()
                if re.search(r"\S\s{2,}\S", line))


def test_cli_prints_prediction_and_measurement():
    code, out, _ = _run(["theory", "--activation", "tanh", "--init", "xavier_normal", "--depth",
                         "20", "--width", "64", "--measure", "--seeds", "2", "--batch-size", "32"])
    rows = _rows(out)
    assert code == 0
    # tanh at sigma_w^2 = 2 fan_in / (fan_in + fan_out) = 1, no bias: q* = 0, chi_1 = phi'(0)^2 = 1
    assert rows["sigma_w^2, sigma_b^2"] == "1, 0" and rows["q* (fixed point of the variance q_l)"] == "0"
    assert rows["chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]"] == "1" and rows["phase"].startswith("critical ")
    # the same two networks measured here by the library function, the prediction within 0.3 decades
    spec = NetSpec(depth=20, width=64, in_shape=(64,), activation="tanh", init="xavier_normal")
    want = np.array([theory_measure.log10_ratio_one(spec, seed, 32) for seed in range(2)])
    (measured,) = [v for k, v in rows.items() if k.startswith("measured (2 seeds")]
    assert measured == f"{want.mean():+.3f} ± {want.std():.3f}"
    predicted = float(rows["predicted log10 |d_1|^2 / |d_L|^2"].split()[0])
    assert predicted == pytest.approx(-1.422, abs=5e-4) and abs(want.mean() - predicted) < 0.3


def test_cli_json_and_not_applicable():
    code, out, _ = _run(["theory", "--activation", "relu", "--init", "he_normal", "--depth", "10",
                         "--width", "32", "--json"])
    d = json.loads(out)
    assert code == 0 and d["phase"] == "critical" and d["chi1"] == pytest.approx(1.0)
    code, out, _ = _run(["theory", "--depth", "1"])
    assert code == 0 and "does not apply" in out


@pytest.mark.parametrize("argv,words", [
    (["--residual", "2", "--init", "he_normal"], ["Yang & Schoenholz", "wide limit"]),
    (["--batchnorm", "before_activation", "--init", "he_normal", "--batch-size", "16"],
     ["Yang et al. 2019", "gain per layer deep in the stack (batch 16)"]),
    (["--kind", "cnn", "--image-size", "6", "--width", "16", "--batch-size", "8"],
     ["Xiao et al. 2018", "fully connected form (no borders)"])], ids=["residual", "batchnorm", "cnn"])
def test_cli_predicts_and_measures_every_family(argv, words):
    code, out, _ = _run(["theory", "--depth", "6", "--measure", "--seeds", "2", "--json", *argv])
    d = json.loads(out)
    assert code == 0 and d["applicable"] and len(d["profile"]) == 6 and d["profile"][-1] == 0
    measured = np.mean(d["measured_log10_ratio"])
    assert abs(measured - d["predicted_log10_ratio"]) < 0.5  # 2 seeds of a small net: loose
    code, out, _ = _run(["theory", "--depth", "6", "--measure", "--seeds", "2", *argv])
    for text in words:  # the family's source and its own rows
        assert text in out, text
    rows = _rows(out)  # the table prints the numbers of the JSON (same seeds)
    assert rows["predicted log10 |d_1|^2 / |d_L|^2"].split()[0] == f"{d['predicted_log10_ratio']:+.3f}"
    std = np.std(d["measured_log10_ratio"])
    assert rows["measured (2 seeds, mean ± std)"] == f"{measured:+.3f} ± {std:.3f}"


@pytest.mark.parametrize("argv", [["--residual", "1", "--depth", "8", "--width", "32"],
                                  ["--batchnorm", "after_activation", "--depth", "8", "--batch-size", "32"]],
                         ids=["residual", "batchnorm"])
def test_cli_figure_draws_the_residual_and_batchnorm_pictures(tmp_path, argv):
    need("matplotlib")
    path = tmp_path / "picture.svg"
    code, _out, _ = _run(["theory", "--init", "he_normal", *argv, "--figure", str(path)])
    text = path.read_text()
    assert code == 0 and "<svg" in text
    assert ("branch scale" in text) if "--residual" in argv else ("batch size" in text)


@pytest.mark.parametrize("argv", [["--activation", "tanhh"], ["--init", "he"], ["--seeds", "0"],
                                  ["--figure", "x.pdf"], ["--input-var", "-1"],
                                  ["--in-features", "0"]])
def test_cli_bad_input_is_one_line_exit_2(argv):
    code, _out, err = _run(["theory", *argv])
    assert code == 2 and err.count("\n") == 1 and err.startswith("graddoctor: error:")


def test_cli_figure_writes_a_png(tmp_path):
    need("matplotlib")
    path = tmp_path / "phase.png"
    code, _out, _ = _run(["theory", "--activation", "tanh", "--init", "he_normal", "--depth", "10",
                         "--figure", str(path)])
    assert code == 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_two_panel_figure_from_comparison_rows(tmp_path, accuracy_rows):
    need("matplotlib")
    from graddoctor.report import theory_figures

    rows = [{"activation": name.split()[1], "init": name.split("init=")[1].split(",")[0],
             "depth": int(name.split("x")[0]), "predicted": pred, "measured": float(v.mean()),
             "std": float(v.std())} for name, pred, v in accuracy_rows]
    diagram = theory.phase_diagram("tanh", np.geomspace(0.1, 4, 30), np.linspace(0, 0.2, 10))
    path = theory_figures.write_figure(tmp_path / "t.svg", diagram, theory.init_points("tanh", 256),
                                       comparison=rows)
    text = path.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and "27 random MLPs" in text
    with pytest.raises(GradDoctorError, match="no configurations"):
        theory_figures.plot_predicted_vs_measured([], None)


def test_docs_page_shows_the_latest_results_file():
    """The page includes docs/results/theory.md, and that file is benchmarks/theory.py's render of the JSON."""
    import importlib.util

    assert '--8<-- "results/theory.md"' in THEORY_PAGE.read_text().splitlines()
    results = THEORY_PAGE.parent / "results"
    spec = importlib.util.spec_from_file_location("bench_theory", THEORY_PAGE.parents[1] / "benchmarks" / "theory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    saved = json.loads((results / "theory.json").read_text())
    block = (results / "theory.md").read_text()
    assert block == bench.markdown(saved["rows"], saved["meta"]["seeds"], saved["meta"]["seed_sets"])
    for fam in ("mlp", "residual", "batchnorm", "cnn"):
        worst = max(abs(r["measured"] - r["predicted"]) for r in saved["rows"] if r["family"] == fam)
        assert f"Worst |error| for {fam}: **{worst:.3f}** decades" in block


def test_docs_theory_page_example_runs_as_shown():
    section = THEORY_PAGE.read_text()
    block = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    shown = re.findall(r"```text\n(.*?)```", section, re.S)[0]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, "docs/theory.md", "exec"), {})
    assert printed.getvalue() == shown


# -- issue 20: residual, BatchNorm and convolutional networks -----------------------------------
def _measured_error(spec, batch, seeds=5, **predict_args):
    values = theory_measure.log10_ratio(spec, seeds, batch)
    pred = theory.predict(spec, batch=batch, **predict_args)
    return values.mean() - pred.log10_ratio, values.std(), pred


@pytest.mark.parametrize("spec", [
    NetSpec(depth=5, width=16, in_shape=(12,), residual=2, activation="tanh", init="xavier_normal"),
    NetSpec(depth=4, width=8, in_shape=(3, 5, 5), kind="cnn", residual=1, init="he_normal"),
    NetSpec(depth=3, width=8, in_shape=(8,), batchnorm="after_activation")], ids=["residual", "cnn", "bn"])
def test_plan_names_every_hidden_layer_in_forward_order_and_measure_finds_them(spec):
    model = nets.build(spec, seed=0)
    linears = [m.linear for m in model.modules() if isinstance(m, nets.Layer)]
    named = {id(m): n for n, m in model.named_modules()}
    assert plan_mod.layer_names(plan_mod.plan(spec)) == tuple(named[id(m)] for m in linears)
    assert theory.predict(spec, batch=16).layers == plan_mod.layer_names(plan_mod.plan(spec))
    # the measured profile is the plain autograd gradient at those modules
    model = nets.build(spec.with_(dtype="float64"), seed=7)
    seen = []

    def keep(_module, _inputs, out):
        out.retain_grad()
        seen.append(out)

    hooks = [m.linear.register_forward_hook(keep) for m in model.modules() if isinstance(m, nets.Layer)]
    gen = torch.Generator().manual_seed(7 + theory_measure.DATA_SEED_OFFSET)
    x = torch.randn(16, *spec.in_shape, generator=gen, dtype=torch.float64)
    r = torch.randn(16, spec.out_features, generator=gen, dtype=torch.float64)
    (model(x) * r).sum().backward()
    for h in hooks:
        h.remove()
    norms = np.log10([float(t.grad.square().sum()) for t in seen])
    got = theory_measure.layer_profile_one(spec, seed=7, batch=16)
    assert np.allclose(got, norms - norms[-1], atol=1e-10)


def test_conv_mixing_counts_the_neighbours_inside_the_image():
    m = plan_mod.mix(np.ones((4, 5))) * 9
    assert m[0, 0] == 4 and m[0, 2] == 6 and m[2, 2] == 9 and plan_mod.mix(2.5) == 2.5


def test_one_walk_reproduces_the_plain_mlp_recursion():
    spec = NetSpec(depth=30, width=256, in_shape=(100,), activation="tanh", init="xavier_normal")
    prof = stack.propagate(plan_mod.plan(spec), stack.Diagonal("tanh", 0.01, (), 1.3))
    want = theory.predict(spec, input_var=1.3).profile
    assert np.allclose(prof - prof[-1], want, atol=1e-10)


def _relu_before_bn_gain(B):
    """Closed form for ReLU, BN before the activation, eps -> 0 (derived in batchnorm.py's terms):
    x_hat is uniform on a sphere in 1-perp; its 2-point moments are those of a Gaussian with
    correlation rho = -1/(B-1) for functions of degree 0 and 2, and E[B/|Ph|^2] = B/((B-3) s2)."""
    rho = -1 / (B - 1)
    k = (math.sqrt(1 - rho * rho) + (math.pi - math.acos(rho)) * rho) / (2 * math.pi)  # E relu relu
    both_on = 0.25 + math.asin(rho) / (2 * math.pi)
    t_i = (B - 2) / 2
    t_j = B / 2 - 1 - (B - 1) * (both_on + k)
    return B * (t_i - t_j / B) / ((B - 3) * (B - 1) * (0.5 - k))


@pytest.mark.parametrize("B", [8, 64, 1024])
def test_batchnorm_gain_matches_the_relu_closed_form(B):
    assert batchnorm.gain("relu", "before_activation", B) == pytest.approx(_relu_before_bn_gain(B), rel=4e-3)


def test_batchnorm_gain_is_derived_not_a_constant():
    # the lab's 1.21x per layer for ||delta||: sqrt(pi / (pi - 1)) as the batch grows
    assert batchnorm.wide_batch_gain("relu") == pytest.approx(math.pi / (math.pi - 1), rel=1e-12)
    assert math.sqrt(_relu_before_bn_gain(10**6)) == pytest.approx(1.2112, abs=1e-4)
    small, large = (batchnorm.gain("relu", "before_activation", b) for b in (16, 256))
    assert small > large > math.pi / (math.pi - 1)  # smaller batches explode faster
    tanh = batchnorm.gain("tanh", "before_activation", 256)
    assert tanh == pytest.approx(batchnorm.wide_batch_gain("tanh"), rel=0.02) and tanh < large


# Measured margins (benchmarks/theory.py, docs/results/theory.md) are 0.01-0.1 decades for
# these; the bounds leave room for 5 other seeds.
@pytest.mark.parametrize("spec,batch,bound", [
    (NetSpec(depth=20, width=256, in_shape=(256,), init="he_normal", batchnorm="before_activation"), 64, 0.15),
    (NetSpec(depth=20, width=256, in_shape=(256,), activation="tanh", init="xavier_normal",
             batchnorm="after_activation"), 64, 0.15),
    (NetSpec(depth=20, width=256, in_shape=(256,), init="he_normal", batchnorm="before_activation",
             residual=2), 64, 0.15),
    (NetSpec(depth=20, width=256, in_shape=(256,), activation="tanh", init="he_normal", residual=2), 64, 0.1),
    (NetSpec(kind="cnn", depth=20, width=32, in_shape=(3, 8, 8), init="he_normal"), 16, 0.2),
], ids=["bn-before-relu", "bn-after-tanh", "bn-residual", "residual-tanh", "cnn-relu"])
def test_structured_predictions_match_float64_measurements(spec, batch, bound):
    err, std, _ = _measured_error(spec, batch)
    assert abs(err) <= bound, (err, std)


def test_residual_relu_needs_the_mean_mode_and_cnn_needs_the_borders():
    # measured - predicted on 4 disjoint sets of 5 seeds: -0.13 to -0.44 (the per-seed spread
    # is 0.2 decades here); the wide limit misses by 2-3 decades
    spec = NetSpec(depth=30, width=256, in_shape=(256,), init="he_normal", residual=1)
    err, _std, pred = _measured_error(spec, 256)
    wide = pred.contrast["wide limit"]
    assert abs(err) <= 0.5 and pred.log10_ratio - wide > 2.5
    cnn = NetSpec(kind="cnn", depth=20, width=32, in_shape=(3, 8, 8), init="he_normal")
    err, _std, pred = _measured_error(cnn, 16)
    assert abs(err) <= 0.2 < abs(pred.log10_ratio - pred.contrast["fully connected form (no borders)"])


# Branch scale 1, ReLU: measured - predicted over 4 disjoint sets of 5 seeds is -0.05 to -0.17
# (depth 20, k = 1) and -0.04 to -0.16 (depth 50, k = 2); the prediction without the g.x
# conservation law (every random part seeding x with 1/width of its energy) missed by -0.38 to
# -0.50 and -0.43 to -0.55.
@pytest.mark.parametrize("depth,k", [(20, 1), (50, 2)], ids=["depth20-k1", "depth50-k2"])
def test_relu_residual_at_branch_scale_one_is_within_a_quarter_decade(depth, k):
    spec = NetSpec(depth=depth, width=WIDTH, in_shape=(WIDTH,), init="he_normal", residual=k)
    err, std, _ = _measured_error(spec, theory_measure.BATCH)
    assert abs(err) <= 0.25, (err, std)


@pytest.mark.parametrize("activation,conserved", [("relu", True), ("leaky_relu", True), ("gelu", False)])
def test_a_positively_homogeneous_block_conserves_the_error_signal_along_the_stream(activation, conserved):
    """g_in . x_in = g_out . x_out per sample (Euler: J_f x = f(x)), the law meanmode.py builds on."""
    spec = NetSpec(depth=12, width=64, in_shape=(64,), activation=activation, init="he_normal",
                   residual=2, bias=False, dtype="float64")
    model = nets.build(spec, seed=0)
    x = torch.randn(32, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    streams: list = []
    hooks = [b.register_forward_pre_hook(lambda _m, a: streams.append(a[0])) for b in model.body]
    out = model(x.requires_grad_())
    for h in hooks:
        h.remove()
    grads = torch.autograd.grad((out * torch.randn_like(out)).sum(), streams)
    gx = torch.stack([(g * s).sum(dim=1) for g, s in zip(grads, streams)])  # (blocks, samples)
    spread = (gx - gx[-1]).abs().max() / gx[-1].abs().max()
    assert (spread < 1e-9) if conserved else (spread > 1e-2), float(spread)

