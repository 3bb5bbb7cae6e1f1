"""The lab: every experiment in quick mode on its 3 seeds asserts its measured numbers with margins
measured over those seeds; the conclusions are computed (a contradicting number flips them,
and names the seed); figures, tables, the `lab` command, the docs page.

Each quick experiment runs once (module fixture, one shared run store) and several tests read
it. The comments give the range measured over seeds 0-2 at the quick size; each bound leaves
a margin outside that range.
"""
from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import need

from graddoctor.cli import main
from graddoctor.lab import EXPERIMENTS, render, run_experiment
from graddoctor.lab.api import CONCLUDERS
from graddoctor.lab.claims import THEORY_TOL, YANG_RELU_BN
from graddoctor.lab.dynamics import outcome
from graddoctor.lab.experiments import SEEDS
from graddoctor.lab.papers import halving_step
from graddoctor.lab.points import counts, points, span
from graddoctor.lab.summary import RunSummary

ROOT = Path(__file__).resolve().parents[1]
_cache: dict = {}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("lab") / "runs.db"


@pytest.fixture(scope="module")
def lab(store):
    """name -> the quick LabResult on SEEDS, run on first use."""
    def get(name: str):
        if name not in _cache:
            _cache[name] = run_experiment(name, store, quick=True, progress_bar=False)
        return _cache[name]
    return get


def at(result, **coords) -> list[RunSummary]:
    """The runs of one grid point, one per seed."""
    found = sorted((s for s in result.summaries if all(s.coords.get(k) == v for k, v in coords.items())),
                   key=lambda s: s.seed)
    assert [s.seed for s in found] == list(SEEDS), coords
    return found


def values(result, what: str, **coords) -> np.ndarray:
    return np.array([getattr(s, what) for s in at(result, **coords)])


def supported(result) -> bool:
    c = result.conclusion
    return c.holds and c.held_on == c.seeds == len(SEEDS) and c.text.startswith("**Supported on 3/3 seeds**")


def test_the_table_is_the_issue_list_and_every_grid_builds_on_every_seed():
    assert list(EXPERIMENTS) == ["activations", "depth", "init", "batchnorm", "residual", "optimizer",
                                 "he2015", "glorot2010"]
    assert SEEDS == (0, 1, 2)
    for e in EXPERIMENTS.values():
        full, quick = e.jobs(), e.jobs(quick=True)
        assert len(quick) % 3 == 0 and len(full) % 3 == 0 and 3 <= len(quick) <= len(full)
        assert {j.config.seed for j in quick} == set(SEEDS)  # quick mode: fewer steps, never fewer seeds
        assert len({j.key() for j in full}) == len(full)  # every run of a grid is distinct, seeds included
        assert e.name in CONCLUDERS


def test_activations(lab):
    r = lab("activations")
    # sigmoid+Xavier at depth 20: -12.1 to -11.9 decades, accuracy 0.09
    assert (values(r, "decades_init", net="sigmoid") < -10).all()
    assert (values(r, "val_acc", net="sigmoid") < 0.3).all()  # 0.08-0.09
    # its per-layer factor is its derivative's RMS (0.23-0.24 both; 0.25 at most for sigmoid)
    per_layer, deriv = values(r, "per_layer_init", net="sigmoid"), values(r, "deriv_rms_init", net="sigmoid")
    assert (np.abs(np.log10(per_layer / deriv)) < 0.01).all() and (deriv < 0.25).all()
    for name in ("relu", "leaky_relu", "prelu", "elu", "selu", "tanh"):  # -0.76 to +0.80 decades
        assert (np.abs(values(r, "decades_init", net=name)) < 1.3).all(), name
        assert (values(r, "val_acc", net=name) > 0.85).all(), name  # 0.905-0.969 in 400 steps
    assert (values(r, "deriv_rms_init", net="tanh") > 0.8).all()  # 0.93: tanh+Xavier is near-linear
    assert supported(r)


def test_depth(lab):
    r = lab("depth")
    for seed in range(3):
        sig = [at(r, net="sigmoid", depth=str(d))[seed].decades_init for d in (3, 5, 10, 20, 50)]
        assert all(b < a - 0.8 for a, b in itertools.pairwise(sig))  # shrinks with every step in depth (>= 1.2 apart)
        assert sig[-1] < -28  # float64: -30.9 to -30.8 at depth 50, no underflow
        per_layer = (sig[-1] - sig[0]) / (50 - 3)
        assert -0.68 < per_layer < -0.58  # -0.63 on every seed
    relu = np.array([values(r, "decades_init", net="relu", depth=str(d)) for d in (3, 5, 10, 20, 50)])
    assert (np.abs(relu) < 0.7).all()  # -0.3 to +0.3
    assert supported(r)


def test_init_matches_the_theory(lab):
    r = lab("init")
    gaps = np.array([abs(s.decades_init - s.extra["predicted"]) for s in r.summaries])
    assert gaps.max() <= THEORY_TOL  # 0.21 at most (width 128; width 64 reaches 0.30)
    assert np.median(gaps) < 0.15  # 0.05
    for a in ("tanh", "relu"):
        assert (values(r, "decades_init", activation=a, init="small") < -15).all()  # -20.9 to -18.0
        assert (values(r, "decades_init", activation=a, init="large") > 4).all()  # +7.6 to +17.4
    assert all("vanishing" in s.verdict_init for s in at(r, activation="relu", init="small"))
    assert all("exploding" in s.verdict_init for s in at(r, activation="relu", init="large"))
    assert all(s.verdict_init == "healthy" for s in at(r, activation="relu", init="he_normal"))
    assert (values(r, "val_acc", activation="tanh", init="xavier_normal") > 0.85).all()  # 0.94-0.97
    assert supported(r)
    head, rows = render.table(r)  # the theory column, one cell per grid point
    assert head[-1] == "theory (decades)" and len(rows) == 8
    assert rows[0][-1] == span([s.extra["predicted"] for s in at(r, activation="tanh", init="small")])


def test_batchnorm_lets_deep_sigmoid_train(lab):
    r = lab("batchnorm")
    assert (values(r, "val_acc", net="sigmoid", bn="plain") < 0.3).all()  # 0.09
    assert (values(r, "val_acc", net="sigmoid", bn="BN") > 0.88).all()  # 0.94-0.96 in 400 steps
    assert (np.abs(values(r, "decades_init", net="sigmoid", bn="BN")) < 1).all()  # -0.4 to -0.3
    per_layer = values(r, "per_layer_init", net="relu", bn="BN")
    assert (np.abs(per_layer - YANG_RELU_BN) < 0.04).all()  # 1.188-1.194x; Yang et al.: 1.211x
    assert supported(r)


def test_residual(lab):
    r = lab("residual")
    shallow, deep = "10", "50"
    drop = values(r, "val_acc", arch="plain+BN", depth=shallow) - values(r, "val_acc", arch="plain+BN", depth=deep)
    assert (drop > 0.4).all()  # 0.66-0.70: 0.85 at depth 10, 0.16-0.19 at 50 (200 steps)
    for arch in ("residual+BN", "residual, 1/sqrt(blocks)"):
        assert (values(r, "val_acc", arch=arch, depth=deep) > 0.85).all(), arch  # 0.92-0.96
    assert (values(r, "decades_init", arch="plain+BN", depth=deep) > 3).all()  # +3.9 to +4.0: explodes at init
    assert (values(r, "decades_trained", arch="plain+BN", depth=deep) > -1.5).all()  # -0.43 to -0.14: not vanishing
    assert supported(r)
    assert "not explained by a vanishing gradient" in r.conclusion.text  # chosen by the two numbers above


def test_optimizer_maps_the_step_size(lab):
    r = lab("optimizer")
    for net in ("tanh", "relu"):  # lr 0.0001: 0.12-0.20; lr 0.01: tanh 0.91-0.95, relu 0.87-0.89 (600 steps)
        assert [outcome(s) for s in at(r, net=net, lr="lr 0.0001", momentum="momentum 0")] == ["stalls"] * 3
        assert [outcome(s) for s in at(r, net=net, lr="lr 0.01", momentum="momentum 0")] == ["trains"] * 3
        assert all(outcome(s) in ("diverges", "explodes", "vanishes", "saturates")
                   for s in at(r, net=net, lr="lr 1", momentum="momentum 0"))
    # tanh at lr 1: its units saturate and the first layer's signal goes (-8.0 to -4.4 decades after training)
    assert (values(r, "decades_trained", net="tanh", lr="lr 1", momentum="momentum 0") < -3).all()
    assert all("saturation" in s.verdict_trained for s in at(r, net="tanh", lr="lr 1", momentum="momentum 0"))
    assert supported(r)


def test_he2015(lab):
    r = lab("he2015")
    assert (values(r, "decades_init", init="xavier_normal") < -4).all()  # -4.66 to -4.46: 0.70x per layer
    assert all(halving_step(s) is None for s in at(r, init="xavier_normal"))
    assert all(halving_step(s) < 250 for s in at(r, init="he_normal"))  # steps 117-137
    gap = values(r, "val_acc", init="he_normal") - values(r, "val_acc", init="xavier_normal")
    assert (gap > 0.3).all()  # 0.73-0.78: He 0.83-0.86, Xavier 0.08-0.09 after 400 steps
    assert supported(r)


def test_glorot2010(lab):
    r = lab("glorot2010")
    for sig in at(r, net="sigmoid"):
        top, below = sig.act_means[:, -1], sig.act_means[:, :-1]
        assert top[0] > 0.45 and top.min() < 0.15  # 0.50 -> 0.09 within 3000 steps
        assert below.min() > 0.35  # the lower layers stay at 0.49-0.64
    for s in r.summaries:
        if s.coords["net"] != "sigmoid":
            assert np.abs(s.act_means[:, -1]).max() < 0.15 and s.val_acc > 0.9  # within 0.06 of 0; 0.96-0.98
    assert supported(r)


# -- the conclusions are computed: pure functions on made-up numbers --------------------------
def fake(label: str, decades: float, acc: float, layers: int = 20, seed: int = 0, **coords) -> RunSummary:
    """A made-up run for the pure conclusion functions."""
    e = np.zeros(0)
    return RunSummary(label, coords, 0, layers, decades, decades, "healthy", "healthy", acc, 2.3, 0.1, None, 1.0,
                      e, e, np.arange(3), np.full((3, layers), 0.5), np.linspace(2.3, 0.1, 100), seed=seed)


def depth_runs(sigmoid_slope=(-0.6, -0.6, -0.6)) -> list[RunSummary]:
    return [fake(f"{n}, {d}", (slope if n == "sigmoid" else 0.0) * (d - 1), 0.95, d, seed, net=n, depth=str(d))
            for seed, slope in enumerate(sigmoid_slope) for n in ("sigmoid", "relu") for d in (3, 20)]


def test_a_claim_is_supported_only_when_it_holds_on_every_seed():
    assert CONCLUDERS["depth"](depth_runs()).held_on == 3
    c = CONCLUDERS["depth"](depth_runs((-0.6, -0.01, -0.6)))  # seed 1's sigmoid keeps its gradient
    assert not c.holds and (c.held_on, c.seeds) == (2, 3)
    assert c.text.startswith("**Not supported by these measurements** (every check held on 2/3 seeds)")
    assert re.search(r"sigmoid's ratio falls [^:]*: not on seed 1[.;]", c.text)
    assert "sigmoid: -0.60…-0.01 decades per layer" in c.text  # the spread over seeds, not seed 0's value


def test_batchnorm_conclusion_fails_when_bn_does_not_help():
    runs = [fake("sigmoid, plain", -12, 0.09, seed=s, net="sigmoid", bn="plain") for s in SEEDS]
    runs += [fake("sigmoid, BN", -11 + 0.1 * s, 0.1, seed=s, net="sigmoid", bn="BN") for s in SEEDS]
    c = CONCLUDERS["batchnorm"](runs)
    assert not c.holds and c.held_on == 0
    assert "with BN: -11.0…-10.8, accuracy 0.10" in c.text


def test_the_tanh_sentence_needs_its_numbers():
    """'kept its gradient ... near their linear range' only when tanh kept it and its phi' RMS shows it."""
    def runs(tanh_decades: float, deriv: float) -> list[RunSummary]:
        out = []
        for s in SEEDS:
            out.append(fake("sigmoid", -12, 0.09, seed=s, net="sigmoid"))
            out.append(fake("relu", 0.1, 0.95, seed=s, net="relu"))
            t = fake("tanh", tanh_decades, 0.95, seed=s, net="tanh")
            t.deriv_rms_init = deriv
            out.append(t)
        return out

    assert "linear range" in CONCLUDERS["activations"](runs(-0.6, 0.93)).text
    assert "linear range" not in CONCLUDERS["activations"](runs(-0.6, 0.3)).text  # small phi': not said
    assert "Saturating is not enough" not in CONCLUDERS["activations"](runs(-5, 0.93)).text  # it vanished


def test_residual_names_no_mechanism_its_numbers_do_not_show():
    def runs(deep_trained: float) -> list[RunSummary]:
        out = []
        for s in SEEDS:
            for arch, deep_acc in (("plain+BN", 0.2), ("residual+BN", 0.95)):
                out.append(fake(f"{arch}, 10", 0.5, 0.95, 10, s, arch=arch, depth="10"))
                d = fake(f"{arch}, 50", 4.0, deep_acc, 50, s, arch=arch, depth="50")
                d.decades_trained = deep_trained if arch == "plain+BN" else 0.3
                out.append(d)
        return out

    healthy, vanished = CONCLUDERS["residual"](runs(-0.4)), CONCLUDERS["residual"](runs(-3.5))
    assert healthy.holds and "not explained by a vanishing gradient" in healthy.text
    assert not vanished.holds and "not explained" not in vanished.text and "He et al." not in vanished.text


def test_outcome_is_what_the_numbers_show():
    s = fake("tanh, lr 1, momentum 0.9", -0.6, 0.13)
    s.decades_trained, s.verdict_trained = 0.0, "saturation, stalled_layers"
    assert outcome(s) == "saturates"  # not "vanishes" at +0.0 decades (the old table's label)
    s.decades_trained = -5.0
    assert outcome(s) == "vanishes"
    s.decades_trained, s.verdict_trained, s.diverged_at = 0.0, "healthy", 40
    assert outcome(s) == "diverges"
    s.diverged_at, s.val_acc = None, 0.9
    assert outcome(s) == "trains"
    s.val_acc = 0.5
    assert outcome(s) == "stalls"


def test_init_needs_the_theory_within_its_bar():
    runs = []
    for s in SEEDS:
        for a, proper in (("tanh", "xavier_normal"), ("relu", "he_normal")):
            for init, d in (("small", -20.0), ("large", 8.0), (proper, 0.1)):
                r = fake(f"{a}, {init}", d, 0.95, seed=s, activation=a, init=init)
                r.extra["predicted"] = d + (0.2 if s < 2 else 0.4)  # seed 2: 0.4 decades off
                runs.append(r)
    c = CONCLUDERS["init"](runs)
    assert not c.holds and c.held_on == 2 and "not on seed 2" in c.text


def test_span_and_counts():
    assert span([-12.1, -11.93, -12.04]) == "-12.1…-11.9"
    assert span([0.951, 0.949], lambda v: f"{v:.2f}") == "0.95"  # the same digits: one value
    assert span([-300.0, -9.4]) == "zero…-9.4"
    assert span([math.nan, 1.0, 2.0]) == "+1.0…+2.0 (n/a ×1)"
    assert counts(["healthy"] * 3) == "healthy"
    assert counts(["vanishing", "healthy", "vanishing"]) == "vanishing ×2; healthy ×1"


def test_halving_step_reads_the_smoothed_curve():
    s = fake("x", 0, 0.9)
    s.loss_curve = np.r_[np.full(50, 2.3), np.full(50, 0.5)]
    s.first_loss = 2.3
    assert 50 <= halving_step(s) < 50 + 25  # the 25-step mean crosses 1.15 inside the window
    s.loss_curve = np.full(100, 2.0)
    assert halving_step(s) is None
    assert math.isnan(fake("y", math.nan, 0.5).per_layer_init)


# -- rendering, the command, the docs -------------------------------------------------------
def test_figure_and_markdown(lab, tmp_path):
    need("matplotlib")
    r = lab("he2015")
    png, md = render.write(r, tmp_path)
    assert 20_000 < png.stat().st_size < 300_000
    text = md.read_text()
    _, rows = render.table(r)
    assert len(rows) == len(points(r.summaries)) == 2 and len(r.summaries) == 6  # a row per point, 3 seeds each
    assert text.count("\n| ") == len(rows) + 1  # header + one line per grid point
    xavier = at(r, init="xavier_normal")
    assert rows[0][3] == span([s.decades_init for s in xavier])  # the range over the seeds
    assert rows[0][-1] == ", ".join(str(halving_step(s)) if halving_step(s) is not None else "never"
                                    for s in xavier)
    assert text.startswith("### `he2015`: ") and text.endswith(r.conclusion.text + "\n")


def test_cli_list_and_run_resumes_from_the_store_with_seeds_in_the_key(lab, store, tmp_path, capsys):
    need("matplotlib")
    lab("he2015")  # 2 points x 3 seeds, stored in `store` by the fixture
    assert main(["lab", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in [*EXPERIMENTS, "rnn"])
    code = main(["lab", "run", "he2015", "--quick", "--resume", "--store", str(store), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "6 runs" in out and "(6 reused)" in out and (tmp_path / "he2015.png").exists()
    assert main(["lab", "run", "he2015", "--quick", "--resume", "--seeds", "1", "--store", str(store),
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 runs" in out and "(2 reused)" in out
    assert "2 grid points × 1 seeds (1)" in (tmp_path / "he2015.md").read_text()
    from graddoctor.store import RunStore

    with RunStore(store) as st:  # resumed: no new run was trained
        runs = [x for x in st.runs() if x.config.get("group") == "he2015"]
        assert sorted(x.config["seed"] for x in runs) == [0, 0, 1, 1, 2, 2]


def test_cli_errors_are_one_line(capsys):
    assert main(["lab", "run", "deph"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown experiment 'deph'" in err[0] and "depth" in err[0]
    assert main(["lab", "run", "depth", "--workers", "0"]) == 2
    assert main(["lab"]) == 2
    with pytest.raises(SystemExit) as exit_:
        main(["lab", "run", "depth", "--seeds", "0,x"])
    assert exit_.value.code == 2 and "not a comma-separated list of integers" in capsys.readouterr().err


def test_docs_lab_page_includes_every_generated_table_and_figure():
    """docs/lab.md shows what `graddoctor lab run all --out docs/lab` wrote, on 3 seeds, pasted nowhere."""
    page = (ROOT / "docs" / "lab.md").read_text()
    for name in ("summary", "thresholds"):  # `lab run all` writes both beside the experiments
        assert f'--8<-- "lab/{name}.md"' in page and (ROOT / "docs" / "lab" / f"{name}.md").stat().st_size > 100
    for name in [*EXPERIMENTS, "rnn"]:
        md = (ROOT / "docs" / "lab" / f"{name}.md").read_text()
        assert f'--8<-- "lab/{name}.md"' in page, name  # included, never pasted
        assert re.search(r"grid points × 3 seeds \(0, 1, 2\)", md), name
        table = [line for line in md.splitlines() if line.startswith("| ")]
        assert len(table) >= 3, name  # a header and rows
        assert re.search(r"\*\*(Supported on 3/3 seeds|Not supported by these measurements)\*\*", md), name
        if name != "rnn":
            png = ROOT / "docs" / "lab" / f"{name}.png"
            assert png.stat().st_size < 200_000, name  # small, committed
            assert f"](lab/{name}.png)" in page and f'<a id="lab-{name}"></a>' in page, name
