"""Figures: golden checks on the numbers behind each one, on what each drawer puts on its Axes,
and re-rendering every figure from the store alone."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from conftest import need
from fakeruns import GAIN, PREACT_STD, planted_diagnosis, planted_history, planted_trace, spec_for, with_values

from graddoctor.report import figdata as fd
from graddoctor.report import figures as F
from graddoctor.store import RunStore

matplotlib = need("matplotlib")
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Annotation  # noqa: E402

DEPTH, STEPS = 8, 12


@pytest.fixture(scope="module")
def traces():
    return {k: planted_trace(k, depth=DEPTH, steps=STEPS, seed=i) for i, k in enumerate(GAIN)}


def _ax():
    return Figure(figsize=(6, 4)).add_subplot()


# -- 1 ---------------------------------------------------------------------------------
def test_depth_profile_data_and_lines(traces):
    profiles = [fd.depth_profile(t, k) for k, t in traces.items()]
    van = profiles[0]
    assert van.depth.tolist() == list(range(1, DEPTH + 2))
    np.testing.assert_allclose(van.values, np.median(traces["vanishing"]["grad_rms"], axis=0))
    # planted: the signal shrinks 4x per layer towards the input -> 4**8 between first and last hidden
    assert van.values[-2] / van.values[0] == pytest.approx(4.0 ** (DEPTH - 1), rel=0.15)
    ax = _ax()
    F.plot_depth_profile(profiles, ax)
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == list(GAIN) and ax.get_yscale() == "log"
    np.testing.assert_allclose(lines[1].get_ydata(), profiles[1].values)


# -- 2 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(GAIN))
def test_backward_chain_recovers_the_planted_gain(traces, kind):
    chain = fd.backward_chain(traces[kind])
    assert chain.per_sample and len(chain.gain) == DEPTH
    # 5% per-layer noise, median over 12 steps: the planted gain within 10%
    np.testing.assert_allclose(chain.gain, GAIN[kind], rtol=0.10)
    ax = _ax()
    F.plot_backward_chain(chain, ax)
    arrows = [t for t in ax.texts if isinstance(t, Annotation)]
    labels = [t.get_text() for t in ax.texts if not isinstance(t, Annotation)]
    assert len(arrows) == DEPTH and len(labels) == DEPTH and all(t.startswith("×") for t in labels)
    assert np.allclose([float(t[1:]) for t in labels], GAIN[kind], rtol=0.10)
    sizes = ax.collections[0].get_sizes()
    assert len(sizes) == DEPTH + 1
    if kind == "vanishing":  # node size follows the signal: smallest next to the input
        assert np.all(np.diff(sizes) > 0)
    if kind == "exploding":
        assert np.all(np.diff(sizes) < 0)


def test_backward_chain_marks_missing_signals():
    t = with_values(planted_trace("vanishing", depth=4, steps=3), "delta_rms", slice(None), 1, np.nan)
    chain = fd.backward_chain(t)
    assert np.isnan(chain.signal[1]) and np.isnan(chain.gain[:2]).all() and np.isfinite(chain.gain[2:]).all()
    ax = _ax()
    F.plot_backward_chain(chain, ax)
    assert len(ax.collections[0].get_sizes()) == 4
    assert len([t for t in ax.texts if not isinstance(t, Annotation)]) == 2  # gains only where measured


# -- 3 ---------------------------------------------------------------------------------
def test_activation_panels_flat_regions_and_measured_inputs(traces):
    sig, tanh, relu = fd.activation_panels(traces["vanishing"])
    # phi' < 1% of its max: sigmoid |x| > 5.99, tanh |x| > 2.99, relu x < 0 (grid step 0.02)
    np.testing.assert_allclose(sig.flat, [(-8, -5.99), (5.99, 8)], atol=0.03)
    np.testing.assert_allclose(tanh.flat, [(-8, -2.99), (2.99, 8)], atol=0.03)
    np.testing.assert_allclose(relu.flat, [(-8, 0)], atol=0.03)
    np.testing.assert_allclose(sig.dphi, sig.phi * (1 - sig.phi), atol=1e-12)
    assert [s for _, s in sig.measured] == pytest.approx([PREACT_STD["vanishing"]] * 3)
    assert sig.flat_fraction == ("saturated", pytest.approx(0.6))
    assert tanh.measured == [] and tanh.flat_fraction is None  # not this run's activation
    healthy_relu = fd.activation_panels(traces["healthy"])[2]
    assert healthy_relu.flat_fraction == ("dead", pytest.approx(0.05))
    ax = _ax()
    F.plot_activation(sig, ax)
    assert len(ax.patches) == 2  # the two shaded saturation regions
    dotted = [ln for ln in ax.get_lines() if "≈ N(0" in ln.get_label()]
    assert len(dotted) == 3 and max(dotted[0].get_ydata()) == pytest.approx(1.0)
    assert any("60% of units saturated" in t.get_text() for t in ax.texts)


# -- 4 ---------------------------------------------------------------------------------
def test_heatmap_is_log10_of_each_layer_and_step():
    t = with_values(planted_trace("vanishing", depth=4, steps=6), "grad_rms", 2, 3, 0.0)  # drawn grey
    hm = fd.heatmap(t)
    assert hm.log10.shape == (5, 6) and hm.steps.tolist() == list(range(6))
    with np.errstate(divide="ignore"):
        expect = np.log10(t["grad_rms"].T)
    ok = np.isfinite(expect)
    np.testing.assert_allclose(hm.log10[ok], expect[ok])
    assert np.isnan(hm.log10[3, 2])
    ax = _ax()
    F.plot_heatmap(hm, ax)
    img = ax.images[0].get_array()
    assert img.mask[3, 2] and img.mask.sum() == 1
    np.testing.assert_allclose(img.data[ok], expect[ok])


# -- 5 ---------------------------------------------------------------------------------
def test_training_curves_and_treatment_bars():
    h = planted_history("healthy", steps=10)
    h.step_loss[3] = float("nan")
    loss = fd.loss_curves({"a": h, "b": planted_history("vanishing", steps=10)})
    assert [s.label for s in loss] == ["a", "b"] and len(loss[0].x) == 9 and 3 not in loss[0].x
    acc = fd.accuracy_curves({"a": h})
    assert acc[0].y.tolist() == h.val_acc
    bars = fd.treatment_bars([{"remedy": "relu", "accuracy": 0.9, "healthy": True},
                              {"remedy": "clip", "accuracy": None, "healthy": None}])
    ax = _ax()
    F.plot_treatments(bars, ax)
    widths = [p.get_width() for p in ax.patches]
    assert widths == [0.9, 0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["relu", "clip"]


# -- from the store ----------------------------------------------------------------------
def test_render_all_from_the_store_alone(tmp_path, traces):
    with RunStore(tmp_path / "runs.db") as store:
        ids = [store.save_run(spec_for(k, DEPTH), {}, t, planted_history(k, steps=STEPS), planted_diagnosis(t, k))
               for k, t in traces.items()]
        store.add_treatment(ids[0], "relu", {"history": planted_history("healthy", steps=STEPS).to_dict()},
                            True, 0.3, 0.9, 1.0)
    with RunStore(tmp_path / "runs.db", create=False) as store:  # a fresh reader: nothing in memory
        paths = F.render_all(store, ids[0], tmp_path / "figs", compare=tuple(ids[1:]))
        data = fd.load_report_data(store, ids[0], tuple(ids[1:]))
    assert [p.name for p in paths] == [f"{i}_{n}.{e}" for i, n in enumerate(F.NAMES, 1) for e in F.FORMATS]
    for p in paths:
        assert p.stat().st_size > 5000, p
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert ET.parse(p).getroot().tag.endswith("svg")
    assert [p.label for p in data.profiles()] == ["#1 sigmoid 8x32: vanishing", "#2 relu 8x32: exploding",
                                                  "#3 relu 8x32: healthy"]
    assert list(data.histories()) == [p.label for p in data.profiles()] + ["treat: relu"]


def test_partial_run_without_steps_still_renders(tmp_path):
    with RunStore(tmp_path / "runs.db") as store:
        rid = store.start_run({"depth": 3}, {})
        figs = F.build_figures(fd.load_report_data(store, rid))
    assert list(figs) == ["activations", "training"]
