"""The lab: every experiment in quick mode asserts its measured outcome; conclusions that
contradict the claim say so; figures, tables and the `lab` command.

Each quick experiment runs once (module fixture, one shared run store) and several tests read
it. Margins hold across seeds 0-2 (measured: see the comments).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from graddoctor.cli import main
from graddoctor.lab import EXPERIMENTS, render, run_experiment
from graddoctor.lab.api import CONCLUDERS
from graddoctor.lab.dynamics import halving_step, outcome
from graddoctor.lab.summary import RunSummary

_cache: dict = {}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("lab") / "runs.db"


@pytest.fixture(scope="module")
def lab(store):
    """name -> the quick LabResult (seed 0), run on first use."""
    def get(name: str):
        if name not in _cache:
            _cache[name] = run_experiment(name, store, quick=True, progress_bar=False)
        return _cache[name]
    return get


def by(result, **coords):
    found = [s for s in result.summaries if all(s.coords.get(k) == v for k, v in coords.items())]
    assert len(found) == 1, coords
    return found[0]


def test_the_table_is_the_issue_list_and_every_grid_builds():
    assert list(EXPERIMENTS) == ["activations", "depth", "init", "batchnorm", "residual", "optimizer",
                                 "he2015", "glorot2010"]
    for e in EXPERIMENTS.values():
        full, quick = e.jobs(), e.jobs(quick=True)
        assert 1 <= len(quick) <= len(full)
        assert len({j.key() for j in full}) == len(full)  # every run of a grid is distinct
        assert set(CONCLUDERS) >= {e.name}


def test_activations(lab):
    r = lab("activations")
    # sigmoid+Xavier at depth 20: -11.9 to -12.1 decades on seeds 0-2, chance accuracy
    assert by(r, net="sigmoid").decades_init < -8 and by(r, net="sigmoid").val_acc < 0.3
    for name in ("relu", "leaky_relu", "prelu", "elu", "selu", "tanh"):
        s = by(r, net=name)  # within +-0.8 decades, 0.92-0.97 accuracy on seeds 0-2
        assert abs(s.decades_init) < 1.5 and s.val_acc > 0.85, name
    assert r.conclusion.holds and "tanh" in r.conclusion.text  # tanh+Xavier keeps its gradient: said


def test_depth(lab):
    r = lab("depth")
    sig = [by(r, net="sigmoid", depth=str(d)).decades_init for d in (3, 5, 10, 20, 50)]
    assert all(b < a for a, b in itertools.pairwise(sig))  # shrinks with every step in depth
    assert sig[-1] < -25  # float64: -30.9 at depth 50, no underflow
    per_layer = (sig[-1] - sig[0]) / (50 - 3)
    assert -0.8 < per_layer < -0.45  # -0.63 decades per layer on seeds 0-2
    assert all(abs(by(r, net="relu", depth=str(d)).decades_init) < 1 for d in (3, 5, 10, 20, 50))
    assert r.conclusion.holds


def test_init_matches_the_theory(lab):
    r = lab("init")
    for s in r.summaries:  # measured within 0.30 decades of the prediction on seeds 0-2 (width 64)
        assert abs(s.decades_init - s.extra["predicted"]) < 0.75, s.label
    assert "vanishing" in by(r, activation="relu", init="small").verdict_init
    assert "exploding" in by(r, activation="relu", init="large").verdict_init
    assert by(r, activation="relu", init="he_normal").verdict_init == "healthy"
    assert by(r, activation="tanh", init="xavier_normal").val_acc > 0.85
    assert r.conclusion.holds and "theory (decades)" in r.conclusion.columns


def test_batchnorm_lets_deep_sigmoid_train(lab):
    r = lab("batchnorm")
    plain, bn = by(r, net="sigmoid", bn="plain"), by(r, net="sigmoid", bn="BN")
    assert plain.val_acc < 0.3 and bn.val_acc > 0.9  # 0.09 vs 0.96-0.97 on seeds 0-2
    relu_bn = by(r, net="relu", bn="BN")
    assert 1.1 < relu_bn.per_layer_init < 1.3  # 1.19x per layer (Yang et al. 2019: 1.21x)
    assert r.conclusion.holds and "1.21x" in r.conclusion.text


def test_residual(lab):
    r = lab("residual")
    plain = [by(r, arch="plain+BN", depth=str(d)) for d in (10, 30, 50)]
    res = [by(r, arch="residual+BN", depth=str(d)) for d in (10, 30, 50)]
    # plain+BN: 0.93-0.94 at 10, 0.11-0.22 at 50; residual+BN: 0.94-0.97 at every depth (seeds 0-2)
    assert plain[0].val_acc - plain[-1].val_acc > 0.4
    assert all(s.val_acc > 0.85 for s in res)
    assert plain[-1].decades_init > 2  # the plain BN net explodes at init (+3.9 to +4.0) ...
    assert plain[-1].decades_trained > -2  # ... and after training does not vanish (-0.2 to -0.7)
    assert r.conclusion.holds and "not vanishing" in r.conclusion.text


def test_optimizer_maps_the_step_size(lab):
    r = lab("optimizer")
    for net in ("tanh", "relu"):
        assert outcome(by(r, net=net, lr="lr 0.0001", momentum="momentum 0")) == "stalls"
        assert outcome(by(r, net=net, lr="lr 0.01", momentum="momentum 0")) == "trains"
        assert outcome(by(r, net=net, lr="lr 1", momentum="momentum 0.9")) in ("explodes", "vanishes")
    assert outcome(by(r, net="tanh", lr="lr 1", momentum="momentum 0")) == "vanishes"  # saturates
    assert r.conclusion.holds


def test_he2015(lab):
    r = lab("he2015")
    xavier, he = by(r, init="xavier_normal"), by(r, init="he_normal")
    assert xavier.decades_init < -3.5  # -4.5 to -4.7: 0.70x per layer over 30 layers
    assert halving_step(xavier) is None and halving_step(he) < 300  # he: steps 117-137
    assert he.val_acc > xavier.val_acc + 0.3
    assert r.conclusion.holds


def test_glorot2010(lab):
    r = lab("glorot2010")
    sig = by(r, net="sigmoid")
    top, below = sig.act_means[:, -1], sig.act_means[:, :-1]
    assert top[0] > 0.45 and top.min() < 0.15  # 0.50 -> 0.09 within 3000 steps on seeds 0-2
    assert below.min() > 0.4  # the lower layers stay near 0.5
    for s in r.summaries:
        if s is not sig:
            assert np.abs(s.act_means[:, -1]).max() < 0.15 and s.val_acc > 0.9
    assert r.conclusion.holds


def fake(label: str, decades: float, acc: float, layers: int = 20, **coords) -> RunSummary:
    """A made-up run for the pure conclusion functions."""
    e = np.zeros(0)
    return RunSummary(label, coords, 0, layers, decades, decades, "healthy", "healthy", acc, 2.3, 0.1, None, 1.0,
                      e, e, np.arange(3), np.full((3, layers), 0.5), np.linspace(2.3, 0.1, 100))


def test_a_contradicting_measurement_is_reported_as_such():
    """Sigmoid that keeps its gradient and trains: the depth claim is not supported, and said so."""
    runs = [fake(f"{n}, {d}", -0.01 * d, 0.95, d, net=n, depth=str(d)) for n in ("sigmoid", "relu") for d in (3, 20)]
    c = CONCLUDERS["depth"](runs)
    assert not c.holds and c.text.startswith("**Not supported")
    assert "sigmoid: -0.01 decades per layer" in c.text
    ok = [fake(f"sigmoid, {d}", -0.6 * d, 0.1, d, net="sigmoid", depth=str(d)) for d in (3, 20)] + runs[2:]
    assert CONCLUDERS["depth"](ok).holds


def test_batchnorm_conclusion_fails_when_bn_does_not_help():
    runs = [fake("sigmoid, plain", -12, 0.09, net="sigmoid", bn="plain"),
            fake("sigmoid, BN", -11, 0.1, net="sigmoid", bn="BN")]
    c = CONCLUDERS["batchnorm"](runs)
    assert not c.holds and "with BN: -11.0 decades, accuracy 0.10" in c.text


def test_figure_and_markdown(lab, tmp_path):
    r = lab("he2015")
    png, md = render.write(r, tmp_path)
    assert 20_000 < png.stat().st_size < 300_000
    text = md.read_text()
    head, rows = render.table(r)
    assert len(rows) == len(r.summaries) == 2
    assert text.count("\n| ") == len(rows) + 1  # header + one line per run
    assert "loss halved at" in head and r.conclusion.text in text and "![he2015](he2015.png)" in text


def test_cli_list_and_run_resumes_from_the_store(lab, store, tmp_path, capsys):
    lab("he2015")  # stored in `store` by the fixture
    assert main(["lab", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPERIMENTS)
    code = main(["lab", "run", "he2015", "--quick", "--resume", "--store", str(store), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "Supported." in out and (tmp_path / "he2015.png").exists()
    from graddoctor.store import RunStore

    with RunStore(store) as st:  # resumed: no new run was trained
        assert len([x for x in st.runs() if x.config.get("group") == "he2015"]) == 2


def test_cli_errors_are_one_line(capsys):
    assert main(["lab", "run", "deph"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown experiment 'deph'" in err[0] and "depth" in err[0]
    assert main(["lab", "run", "depth", "--workers", "0"]) == 2
    assert main(["lab"]) == 2


def test_halving_step_reads_the_smoothed_curve():
    s = fake("x", 0, 0.9)
    s.loss_curve = np.r_[np.full(50, 2.3), np.full(50, 0.5)]
    s.first_loss = 2.3
    assert 50 <= halving_step(s) < 50 + 25  # the 25-step mean crosses 1.15 inside the window
    s.loss_curve = np.full(100, 2.0)
    assert halving_step(s) is None
    assert math.isnan(fake("y", math.nan, 0.5).per_layer_init)


def test_docs_lab_page_shows_every_experiment_with_its_committed_figure():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    section = (root / "docs" / "lab.md").read_text()
    assert "## What the lab shows" in section
    for name in EXPERIMENTS:
        png = root / "docs" / "lab" / f"{name}.png"
        assert png.stat().st_size < 200_000, name  # small, committed
        assert f"](lab/{name}.png)" in section and f'<a id="lab-{name}"></a>' in section, name
        assert f"(#lab-{name})" in section, name  # linked from the claims table


def test_lab_run_rnn_from_the_command_line(tmp_path, capsys):
    """The adding-problem experiment is part of `graddoctor lab` (quick size)."""
    from graddoctor.cli import main

    assert main(["lab", "run", "rnn", "--quick", "--out", str(tmp_path), "--store", str(tmp_path / "r.db")]) == 0
    out = capsys.readouterr().out
    assert "Supported." in out and "lstm" in out
    assert (tmp_path / "rnn.md").read_text().startswith("| cell | T |")
