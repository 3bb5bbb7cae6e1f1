"""The probe's cheaper paths give the numbers of the plain ones: sampled update ratios, fused
saturation counts, in-place phi', reused scratch memory, and no flush on unrecorded steps."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import graddoctor
from graddoctor import activations, watch
from graddoctor.probe import pipeline, pooling, stats, update
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
    errors, rms_errors = [], []
    with watch(model, optimizer=opt) as probe:
        for _ in range(8):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            before = [p.detach().clone() for p in big]
            opt.step()
            probe.step(loss)
            exact = np.array([float((p.detach() - b).norm() / b.norm()) for p, b in zip(big, before)])
            layers = [probe._layout.owner[id(p)][0] for p in big]
            got = probe.trace["update_ratio"][-1][layers]
            errors.append(np.abs(got / exact - 1))
            rms = np.array([float(b.square().mean().sqrt()) for b in before])  # weight_rms: from the sample too
            rms_errors.append(np.abs(probe.trace["weight_rms"][-1][layers] / rms - 1))
    errors, rms_errors = np.concatenate(errors), np.concatenate(rms_errors)
    assert errors.max() < 0.03 and np.median(errors) < 0.01, errors
    assert errors.max() > 0  # really an estimate (this test would not notice an exact path)
    assert rms_errors.max() < 0.02 and np.median(rms_errors) < 0.005 and rms_errors.max() > 0, rms_errors


@pytest.mark.parametrize("init", ["kaiming_uniform", "normal", "orthogonal", "sparse_rows"])
def test_sampled_weight_rms_is_within_2_percent_over_inits_and_seeds(init):
    errors = []
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        ws = [torch.empty(256, 256), torch.empty(512, 784), torch.empty(64, 32, 3, 3)]
        for w in ws:
            if init == "kaiming_uniform":
                w.uniform_(-1, 1, generator=gen)
            elif init == "orthogonal":
                w.copy_(torch.linalg.qr(torch.randn(w.shape[0], w[0].numel(), generator=gen).T)[0].T[: w.shape[0]]
                        .reshape(w.shape) if w.shape[0] <= w[0].numel() else torch.randn(w.shape, generator=gen))
            else:
                w.normal_(generator=gen)
            if init == "sparse_rows":  # every other output row dead: structure the sample must not alias
                w[::2] = 0
        sample = update.WeightSample(ws)
        sample.take(ws)
        got = sample.weight_norms()
        errors += [abs(float(g) / float(w.norm()) - 1) for g, w in zip(got, ws)]
    assert max(errors) < 0.02 and np.median(errors) < 0.006, errors


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
        # host=True (CPU): small results read to skip passes; the same numbers, as host ints where counted
        host = stats.input_stats(x, source, Scratch(), host=True) + stats.output_stats(y, Scratch(), host=True)
        clean = stats.output_stats(y.nan_to_num(0.0, 0.0, 0.0), None, host=True)
    for a, b, c, h in zip(fresh, first, again, host):
        if isinstance(a, torch.Tensor):
            assert all(torch.allclose(a, t, rtol=0, atol=0, equal_nan=True) for t in (b, c))
            assert float(h) == float(a) or (math.isnan(float(a)) and math.isnan(float(h)))
        else:
            assert a == b == c == h
    assert float(first[2]) == 2 * 16 * 16 and float(first[-1]) == 3  # planted: dead units, non-finite
    assert clean[1] == 0 and isinstance(clean[1], int)  # a finite output norm: nothing counted
    if name in ("tanh", "sigmoid"):  # saturated elements present (x = act(3 z)): counted on the host path too
        assert isinstance(host[3], torch.Tensor) and float(host[3]) > 0
        calm = stats.activation_of(torch.tanh(model_in * 0.1)) if name == "tanh" else None
        if calm is not None:
            assert stats.input_stats(torch.tanh(model_in * 0.1).detach(), calm, None, host=True).saturated == 0


def test_unrecorded_steps_do_not_flush_the_trace(monkeypatch):
    calls = []
    real = pooling.pool_steps
    monkeypatch.setattr(pipeline, "pool_steps", lambda raws, *a: calls.append(len(raws)) or real(raws, *a))
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


def test_a_tensor_that_is_one_layers_output_and_the_next_ones_input_gets_one_hook(monkeypatch):
    """Conv -> BatchNorm share a tensor (one hook, one norm, two rows); ReLU(inplace) makes a new node."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(inplace=True),
                                torch.nn.Conv2d(4, 3, 3))
    x = torch.randn(5, 2, 8, 8)
    hooked = []
    real = torch.Tensor.register_hook
    monkeypatch.setattr(torch.Tensor, "register_hook", lambda t, fn: hooked.append(t.shape) or real(t, fn))
    with watch(model, blocks=None) as probe:
        loss = model(x).square().mean()
        loss.backward()
        probe.step(loss)
    # conv0 out = bn in: one; bn out; conv3 in (bn out after the in-place ReLU: another node); conv3 out
    assert len(hooked) == 4
    # exact against autograd on the same pattern: test_probe.py's oracle test, ResidualBNCNN (conv-bn-ReLU_)
    assert np.isfinite(probe.trace["delta_rms"][0]).all() and np.isfinite(probe.trace["input_grad_rms"][0, 1:]).all()
    # conv0's output signal is bn's input signal: the same number in both rows
    assert probe.trace["delta_rms"][0, 0] == probe.trace["input_grad_rms"][0, 1]
    assert probe.trace["delta_rms"][0, 1] != probe.trace["input_grad_rms"][0, 2]  # not merged across the in-place op


@pytest.mark.parametrize("name, approximate", [("gelu", "none"), ("gelu", "tanh"), ("silu", None)])
def test_fused_derivative_is_the_one_backward_applies(name, approximate):
    gen = torch.Generator().manual_seed(5)
    z = (torch.randn(64, 8, 16, 16, generator=gen) * 3).requires_grad_()  # 2^17 elements: scratch path too
    y = F.gelu(z, approximate=approximate) if name == "gelu" else F.silu(z)
    source = stats.activation_of(y)
    assert source.name == name
    (autograd_d,) = torch.autograd.grad(y.sum(), z, retain_graph=True)  # phi'(z), as backward computes it
    with torch.no_grad():
        fresh = stats.FUSED_DERIV[name](z.detach(), source.node, None)
        into = stats.FUSED_DERIV[name](z.detach(), source.node, torch.empty_like(z))
        got = stats.input_stats(y.detach(), source, Scratch()).deriv_norm
    assert torch.equal(fresh, autograd_d) and torch.equal(into, autograd_d)
    if approximate != "tanh":  # the registry's formula is the exact (erf) GELU
        registry = activations.get(name).deriv(z.detach(), 0.0)
        assert float(got) == pytest.approx(float(registry.norm()), rel=1e-5)
    assert float(got) == pytest.approx(float(autograd_d.norm()), rel=1e-6)


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_saturation_shortcut_counts_as_the_registry_at_the_threshold(name):
    """The host path's shortcut (tanh: from the largest |x|) and the count agree with the registry, ties included."""
    act = activations.get(name)
    z = torch.linspace(-1, 1, 4001)
    edge = 0.99498743710662 if name == "tanh" else 0.9974937185533100  # phi'(edge) ~= the threshold
    near = torch.tensor(edge, dtype=torch.float32) + z * 2e-7  # a few ulps on both sides
    calm = z * 0.4 + (0.5 if name == "sigmoid" else 0.0)
    counts = []
    for y in (torch.cat([near, -near if name == "tanh" else 1 - near, calm]), calm, near[near > edge]):
        x = y.reshape(-1, 1).repeat(1, 4)  # (samples, units)
        expect = int(act.saturated(x).sum())
        for host in (True, False):
            got = stats.input_stats(x, stats.Source(name, None), Scratch(), host=host).saturated
            assert float(got) == expect, (host, float(got), expect)
        counts.append(expect)
    assert counts[0] > 0 and counts[1] == 0 and counts[2] > 0  # mixed, calm (the shortcut), all just past the edge


class _Shared(torch.nn.Module):
    """Three projections of one tensor (as q/k/v): one input, reduced once, filed three times."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(6, 16)
        self.q, self.k, self.v = torch.nn.Linear(16, 8), torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.out(torch.sigmoid(self.q(h)) * self.k(h) + self.v(h))


def test_a_tensor_that_several_layers_receive_is_reduced_once_with_the_same_numbers(monkeypatch):
    calls = []
    real = stats.input_stats
    monkeypatch.setattr(stats, "input_stats", lambda x, *a, **k: calls.append(x.shape) or real(x, *a, **k))
    torch.manual_seed(0)
    model = _Shared()
    x = torch.randn(32, 6)
    with watch(model, blocks=None) as probe:
        loss = model(x).square().mean()
        loss.backward()
        probe.step(loss)
    assert len(calls) == 3  # inp (x), q/k/v (h, once), out
    t = probe.trace
    names = [layer.name for layer in t.layers]
    h = torch.tanh(model.inp(x)).detach()
    for metric, expect in (("act_mean", float(h.mean())), ("act_std", float(h.std(correction=0))),
                           ("act_deriv_rms", float((1 - h * h).square().mean().sqrt())),
                           ("saturated", float(activations.get("tanh").saturated(h).double().mean()))):
        for name in ("q", "k", "v"):
            assert t[metric][0, names.index(name)] == pytest.approx(expect, rel=1e-5, abs=1e-7), (metric, name)
