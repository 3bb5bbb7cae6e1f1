"""The probe's cheaper paths give the numbers of the plain ones: sampled update ratios, fused
saturation counts, in-place phi', reused scratch memory, and no flush on unrecorded steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import graddoctor
from graddoctor import activations, watch
from graddoctor.probe import pooling, stats, update
from graddoctor.probe import probe as probe_module
from graddoctor.probe.scratch import MIN_NUMEL, Scratch


def _exact_change(params, step):
    before = [p.detach().clone() for p in params]
    step()
    return torch.stack([(p.detach() - b).norm() for p, b in zip(params, before)])


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_sampled_update_ratio_is_within_3_percent_of_the_exact_one(opt_name):
    spec = graddoctor.NetSpec(depth=4, width=256, activation="tanh", in_shape=(784,))
    model = graddoctor.build(spec, seed=0)
    big = [p for n, p in model.named_parameters() if "weight" in n and p.numel() > update.EXACT_UP_TO]
    assert len(big) == 4  # 784x256 and three 256x256: all sampled
    opt = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if opt_name == "sgd"
           else torch.optim.Adam(model.parameters(), lr=1e-3))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 784, generator=gen), torch.randint(0, 10, (128,), generator=gen)
    errors = []
    with watch(model, optimizer=opt) as probe:
        for _ in range(8):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            before = [p.detach().clone() for p in big]
            opt.step()
            probe.step(loss)
            exact = np.array([float((p.detach() - b).norm() / b.norm()) for p, b in zip(big, before)])
            got = probe.trace["update_ratio"][-1][[probe._layout.owner[id(p)][0] for p in big]]
            errors.append(np.abs(got / exact - 1))
    errors = np.concatenate(errors)
    assert errors.max() < 0.03 and np.median(errors) < 0.01, errors
    assert errors.max() > 0  # really an estimate (this test would not notice an exact path)


def test_weight_sample_is_exact_where_it_cannot_sample_and_follows_replaced_data():
    gen = torch.Generator().manual_seed(1)
    small = torch.randn(100, 50, generator=gen)  # below EXACT_UP_TO: copied whole
    strided = torch.randn(300, 400, generator=gen).t()  # not dense in any known layout: exact
    big = torch.randn(256, 512, generator=gen)
    conv = torch.randn(64, 64, 3, 3, generator=gen).to(memory_format=torch.channels_last)
    params = [small, strided, big, conv]
    assert [update.sample_of(p)[0] is None for p in params] == [True, True, False, False]
    sample = update.WeightSample(params)
    for _ in range(2):
        sample.take(params)
        delta = [torch.randn(p.shape, generator=gen) * 1e-3 for p in params]
        exact = _exact_change(params, lambda: [p.sub_(d) for p, d in zip(params, delta)])
        got = sample.change_norms()
        np.testing.assert_allclose(got[:2], exact[:2], rtol=1e-5)
        np.testing.assert_allclose(got[2:], exact[2:], rtol=0.03)
    big.data = torch.zeros_like(big)  # same object and shape, new storage: the sample follows it
    assert sample.fits(params)
    sample.take(params)
    big.add_(1.0)
    assert float(sample.change_norms()[2]) == pytest.approx(float(big.norm()), rel=1e-5)


@pytest.mark.parametrize("top, threshold", [(1.0, 0.01), (0.25, 0.0025), (300.0, 3.0), (5.0, 0.05)])
def test_below_count_matches_a_boolean_count_including_exact_ties(top, threshold):
    gen = torch.Generator().manual_seed(2)
    d = torch.rand(5000, generator=gen) * top
    d[:50] = torch.tensor(threshold, dtype=torch.float32)  # ties: not below
    d[50:60] = 0.0
    d[60:70] = top
    expect = int((d < threshold).sum())
    assert float(stats.below_count(-d, threshold, top)) == expect


@pytest.mark.parametrize("name", sorted(stats.NEG_DERIV_INTO))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_in_place_derivative_rounds_exactly_like_the_registry(name, dtype):
    act = activations.get(name)
    y = act.fn(torch.randn(20000, generator=torch.Generator().manual_seed(3), dtype=dtype) * 4, 0.0)
    got = stats.NEG_DERIV_INTO[name](y, torch.empty_like(y))
    assert torch.equal(-got, act.deriv_from_output(y))


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "relu", "leaky_relu", None])
def test_statistics_with_reused_scratch_equal_fresh_temporaries(name):
    gen = torch.Generator().manual_seed(4)
    model_in = torch.randn(64, 8, 16, 16, generator=gen, requires_grad=True)  # 2^17 elements: scratch
    x = {None: model_in * 3, "tanh": torch.tanh(model_in * 3), "sigmoid": torch.sigmoid(model_in * 3),
         "relu": F.relu(model_in), "leaky_relu": F.leaky_relu(model_in, 0.2)}[name]
    assert x.numel() >= MIN_NUMEL
    x = x.clone() if name is None else x
    with torch.no_grad():
        x[:, :2] = 0  # dead units
    source = stats.activation_of(x)
    assert (source.name if source else None) == name
    y = model_in.detach() * 2
    y[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    scratch = Scratch()
    with torch.no_grad():
        fresh = stats.input_stats(x, source) + stats.output_stats(y)
        first = stats.input_stats(x, source, scratch) + stats.output_stats(y, scratch)
        again = stats.input_stats(x, source, scratch) + stats.output_stats(y, scratch)  # reused buffer
    for a, b, c in zip(fresh, first, again):
        if isinstance(a, torch.Tensor):
            assert all(torch.allclose(a, t, rtol=0, atol=0, equal_nan=True) for t in (b, c))
        else:
            assert a == b == c
    assert float(first[2]) == 2 * 16 * 16 and float(first[-1]) == 3  # planted: dead units, non-finite


def test_unrecorded_steps_do_not_flush_the_trace(monkeypatch):
    calls = []
    real = pooling.pool_steps
    monkeypatch.setattr(probe_module, "pool_steps", lambda raws, *a: calls.append(len(raws)) or real(raws, *a))
    model = graddoctor.build(graddoctor.NetSpec(depth=3, width=8, in_shape=(6,), out_features=5), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    losses = []
    with watch(model, every=3, optimizer=opt) as probe:
        for _ in range(9):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            probe.step(loss)  # adds the loss of a recorded step; touches nothing on the others
            losses.append(float(loss.detach()))
        assert calls == []  # the three recorded steps are still buffered, pooled once when read
        np.testing.assert_allclose(probe.trace["loss"], losses[::3], rtol=1e-6)
    assert calls == [3]
