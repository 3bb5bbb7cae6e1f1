"""The residual-stream theory (issue 20, point 4): the recursion on hand-made blocks, and the
prediction from the probe's forward statistics against its measurement of dL/d(block output) on
real architectures of the zoo at their library init, over seeds.

The bounds were measured on seeds 0-2 (`benchmarks/theory.py --families real` has the table for seeds
0-4): the worst block of GPT-2 (pre-LN) is off by at most 0.01 decades, of ConvNeXt (LayerScale,
downsampling between stages: a drop of a decade in one step) by 0.03, of ResNet-18-like
(BatchNorm, projections, ReLU after the join) by 0.12; each bound is two to three times that and
smaller than what the measured profile itself spans, so a flat prediction fails it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import need
from torch.nn import functional as F

import graddoctor as gd
from graddoctor.report.terminal import render_text
from graddoctor.theory.stream import BlockStats, Event, block_gain, profile
from graddoctor.theory.streamstats import stream_evidence

need("transformers")
import zoo  # noqa: E402  (tests/zoo.py builds the architectures from small configs in code)

BOUND = {"gpt2": 0.03, "convnext": 0.06, "resnet-basic": 0.25}  # decades, worst block
SEEDS = (0, 1, 2)


# -- the recursion on hand-made blocks ------------------------------------------------------
def _prenorm(variances: list[float], v: float) -> list[BlockStats]:
    """Pre-LN blocks with one branch each: the stream's variance before block k is variances[k]."""
    return [BlockStats(f"b{k}", (Event("join", v / s),), 64) for k, s in enumerate(variances)]


def test_pre_norm_keeps_gradient_times_stream_variance_constant():
    """With r = 1 each join multiplies G by (s + v) / s: G s^2 telescopes, the RMS goes as 1/sqrt(s)."""
    v = 0.3
    before = [1.0 + v * k for k in range(12)]  # the stream's variance at each block's input
    after = [s + v for s in before]
    got = profile(_prenorm(before, v))
    want = 0.5 * np.log10(after[-1] / np.array(after))
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got[0] > 0.25  # the gradient grows towards the input


def test_post_norm_resets_and_projection_replaces_the_stream():
    # x + f(x) then LayerNorm of variance 1 + v: (1 + v) * 1 / (1 + v) = 1, flat
    post = BlockStats("b", (Event("join", 0.5), Event("norm", 1 / 1.5)), 64)
    assert block_gain(post) == pytest.approx(1.0)
    # parallel branches that both read the input (GPT-J, Phi): 1 + chi_a + chi_m
    parallel = BlockStats("b", (Event("join", 0.2, reads=0), Event("join", 0.3, reads=0)), 64)
    assert block_gain(parallel) == pytest.approx(1.5)
    serial = BlockStats("b", (Event("join", 0.2, reads=0), Event("join", 0.3, reads=1)), 64)
    assert block_gain(serial) == pytest.approx(1.3 * 1.2)
    # a projection shortcut (keeps=False) and a branch: chi_p + chi_b, then a ReLU after the join
    proj = BlockStats("b", (Event("join", 0.7, keeps=False), Event("join", 0.4)), 64, after=0.5)
    assert block_gain(proj) == pytest.approx(0.5 * 1.1)
    # per element: half the elements after a downsampling with G unchanged -> RMS up by sqrt(2)
    down = [BlockStats("a", (Event("join", 0.0),), 128), BlockStats("b", (Event("join", 0.0),), 64)]
    assert profile(down)[0] == pytest.approx(-0.5 * np.log10(2))


# -- real architectures ---------------------------------------------------------------------
def _evidence(name: str, seed: int) -> dict:
    m = zoo.get(name)
    model, batch = m.make(seed), m.batches(seed, 1)[0]
    torch.manual_seed(seed)
    with gd.watch(model) as probe:
        loss = m.train_step(model, batch)
        loss.backward()
        probe.step(loss)
    ev = stream_evidence(probe.trace)
    assert ev is not None and len(ev["stacks"]) == 1
    return ev["stacks"][0]


@pytest.mark.parametrize("name", sorted(BOUND))
def test_predicted_profile_matches_the_measured_one_over_seeds(name):
    for seed in SEEDS:
        s = _evidence(name, seed)
        pred, meas = np.array(s["predicted"]), np.array(s["measured"])
        assert len(pred) == len(meas) == len(s["blocks"]) >= 8
        assert np.abs(meas - pred).max() <= BOUND[name], (seed, meas.round(3), pred.round(3))
        assert np.abs(meas).max() > BOUND[name]  # a flat prediction would miss: the test can fail


def test_plain_mlp_has_no_stream_prediction():
    model = gd.build(gd.NetSpec(depth=6, width=32, in_shape=(16,)), seed=0)
    with gd.watch(model) as probe:
        loss = model(torch.randn(32, 16)).pow(2).mean()
        loss.backward()
        probe.step(loss)
    assert stream_evidence(probe.trace) is None


def test_checkup_shows_the_stream_prediction_beside_the_measurement():
    m = zoo.get("gpt2")
    model, batch = m.make(0), m.batches(0, 1)[0]
    loss_fn = lambda out, y: F.cross_entropy(out.logits.flatten(0, -2), y.flatten())
    d = gd.checkup(model, batch["input_ids"], batch["labels"], loss_fn=loss_fn)
    t = d.context["theory_stream"]
    (s,) = t["stacks"]
    assert s["form"] == "pre-norm" and len(s["blocks"]) == 12
    assert abs(s["measured"][0] - s["predicted"][0]) <= BOUND["gpt2"]
    text = render_text(d, width=None)
    assert f"10^{s['predicted'][0]:+.2f} predicted, 10^{s['measured'][0]:+.2f} measured" in text
    after = gd.checkup(model, batch["input_ids"], batch["labels"], loss_fn=loss_fn, steps=1)
    assert "theory_stream" not in after.context  # only at initialisation
