"""Verdicts by evidence: divergence on unrecorded steps, what made the first NaN, 16-bit underflow,
the optimizer's view of a small gradient, and severity by impact."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from corpus import mlp
from models import backward_and_step
from torch import nn

import graddoctor as gd


def _mlp(width: int = 16, depth: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(8, width), nn.Tanh()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, 3))


def _train(model, batches, every=1, lr=0.01, optimizer=None, autocast=None, scaler=None):
    """Train on `batches` (a list of (x, y)) under watch(); returns the probe's trace."""
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=lr)
    with gd.watch(model, every=every, optimizer=opt, scaler=scaler) as probe:
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
                loss = nn.functional.cross_entropy(model(x), y)
            backward_and_step(loss, opt, scaler)
            probe.step(loss)
    return probe.trace


def _batches(n, seed=0, batch=32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 8, generator=g), torch.randint(0, 3, (batch,), generator=g)) for _ in range(n)]


def nonfinite_finding(d):
    (f,) = [f for f in d.findings if f.kind == "non_finite"]
    return f


# -- divergence and its causes ------------------------------------------------------------------
def _diverging_trace():
    """25 steps recorded every 10th; a NaN weight makes step 13's forward the first non-finite one."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gd.watch(model, every=10, optimizer=opt) as probe:
        for step, (x, y) in enumerate(_batches(25)):
            if step == 13:
                with torch.no_grad():
                    model[0].weight[0, 0] = float("nan")
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            probe.step(loss)
    return probe.trace


def test_divergence_on_an_unrecorded_step_is_reported():
    trace = _diverging_trace()
    assert list(trace.steps) == [0, 10, 20]
    f = nonfinite_finding(gd.diagnose(trace))
    assert f.severity == "critical"
    assert f.evidence["first_nonfinite_step"] == 13 and not f.evidence["recorded"]
    assert "from step 13 (not a recorded step (every=10)" in f.summary  # the step and the cadence it fell between
    assert any(c.name == "non_finite_forward" and c.evidence.get("recorded") is False for c in f.causes)


def test_nan_in_the_input_batch_is_non_finite_input():
    model = _mlp()
    batches = _batches(6)
    batches[4][0][3, 2] = float("nan")
    d = gd.diagnose(_train(model, batches, every=2))
    f = nonfinite_finding(d)
    assert f.causes[0].name == "non_finite_input" and f.causes[0].evidence["step"] == 4
    assert f.evidence["first_nonfinite_step"] == 4


class LogLinear(nn.Linear):
    """A Linear followed by log: NaN for every negative pre-activation."""

    def forward(self, x):
        return super().forward(x).log()


def test_the_first_module_with_a_non_finite_output_is_named():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), LogLinear(16, 16), nn.Linear(16, 3))
    d = gd.checkup(model, torch.randn(32, 8), torch.randint(0, 3, (32,)))
    f = nonfinite_finding(d)
    assert f.causes[0].name == "non_finite_forward"
    assert f.causes[0].evidence["layer"] == "2" and f.layers[0] == "2"
    assert f.evidence["recorded"] and f.evidence["first_nonfinite_step"] == 0


# -- 16-bit ----------------------------------------------------------------------------------------
def _tiny_loss_batches():
    """Batches whose loss is scaled so small that float16 gradients underflow (a stand-in for a deep net's)."""
    return _batches(8)


def test_float16_without_a_loss_scaler_is_precision_underflow():
    class Tiny(nn.Module):  # the loss is multiplied by 2^-24 inside: gradients below float16's smallest value
        def __init__(self):
            super().__init__()
            self.net = _mlp()

        def forward(self, x):
            return self.net(x) * 2.0 ** -24

    model = Tiny()
    d = gd.diagnose(_train(model, _tiny_loss_batches(), autocast=torch.float16, lr=1.0))
    hits = [f for f in d.findings if any(c.name == "precision_underflow" for c in f.causes)]
    assert hits and hits[0].severity in ("warning", "critical"), str(d)
    assert min(hits[0].evidence["zero_fraction"].values()) > 0.5
    scaled = gd.diagnose(_train(Tiny(), _tiny_loss_batches(), autocast=torch.float16, lr=1.0,
                                scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 24)))
    assert not any(c.name == "precision_underflow" for f in scaled.findings for c in f.causes), str(scaled)


# -- impact for the optimizer in use ---------------------------------------------------------------
@pytest.mark.parametrize("depth, optimizer, learns", [(10, "adamw", True), (10, "sgd", False), (20, "adamw", False)])
def test_a_small_gradient_is_a_disease_only_if_the_layers_stop_learning(depth, optimizer, learns):
    model, x, y, _ = mlp(depth, "sigmoid", "xavier_normal")(0)
    opt = (torch.optim.AdamW(model.parameters(), lr=1e-3) if optimizer == "adamw" else
           torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    d = gd.checkup(model, x, y, steps=30, optimizer=opt)
    (f,) = [f for f in d.findings if f.kind == "vanishing"]
    impact = f.evidence["impact"]
    assert impact["learns"] is learns
    if learns:  # Adam normalises the step: ~the same relative update as the rest of the network
        assert f.severity == "info" and 0.3 < impact["relative_update"] < 3 and not impact["below_eps"]
        assert "vanishing" not in d.kinds()
    else:
        assert f.severity in ("warning", "critical")
        assert impact["below_eps"] if optimizer == "adamw" else impact["relative_update"] < 0.01
        # the summary gives the evidence that was measured, not only the template's words
        why = (f"their update/weight ratio {impact['update_ratio']:.2g} is below" if impact["tiny"] else
               f"their gradient RMS {impact['grad_rms']:.2g} is below" if optimizer == "adamw" else
               f"they move {impact['relative_update']:.2g}x as much as the rest")
        assert f"they stop learning: {why}" in f.summary, f.summary


def test_a_gated_recurrent_layer_at_init_is_a_warning_a_plain_one_critical():
    found = {}
    for cell in (nn.LSTM, nn.RNN):
        torch.manual_seed(0)
        rnn, head = cell(2, 32, batch_first=True), nn.Linear(32, 1)
        model = nn.ModuleDict({"rnn": rnn, "head": head})
        x = torch.randn(16, 100, 2)
        with gd.watch(model) as probe:
            loss = head(rnn(x)[0][:, -1]).square().mean()
            loss.backward()
            probe.step(loss)
        d = gd.diagnose(probe.trace)
        (f,) = [f for f in d.findings if f.kind == "vanishing_through_time"]
        found[cell.__name__] = (f.severity, f.evidence["decades"])
    assert found["LSTM"][0] == "warning" and found["LSTM"][1] < -4  # far beyond 4 decades, and yet it learns
    assert found["RNN"][0] == "critical"


def test_stalled_layers_under_adam_need_a_gradient_below_eps():
    trace = _train(_mlp(), _batches(8), optimizer=None, lr=1e-9)  # SGD at lr 1e-9: nothing moves
    d = gd.diagnose(trace)
    assert "stalled_layers" in d.kinds()
    model = _mlp()
    trace = _train(model, _batches(8), optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
    assert gd.diagnose(trace).healthy
    assert np.isfinite(trace["update_ratio"][1:]).all()


def test_a_demoted_vanishing_says_whether_its_gradient_is_below_adams_eps(monkeypatch):
    """A BERT at 10x lr (zoo: bert-lr10) had 'gradient RMS 4.1e-13 >> eps 1e-08' in its text: the words
    follow the measured comparison, and a gradient below eps is said to be (the steps move only as
    much as the rest's: the whole network may be stalled, which stalled_layers judges)."""
    from graddoctor.diagnose import impact
    from graddoctor.diagnose.findings import Finding

    ev = {"learns": True, "update_ratio": 2e-3, "update_ratio_rest": 4e-3, "relative_update": 0.5,
          "grad_rms": 4.1e-13, "eps": 1e-8, "below_eps": True, "decay_only": False, "optimizer": "AdamW"}
    found = Finding("vanishing", "critical", ("a",), "signal far below")
    for grad, below, tail in ((4.1e-13, True, "; their gradient RMS 4.1e-13 is below 1x eps 1e-08, so their steps "
                                              "are only as large as the rest's"),
                              (3e-5, False, ", gradient RMS 3e-05 above eps 1e-08")):
        monkeypatch.setattr(impact, "learning", lambda *a, g=grad, b=below: {**ev, "grad_rms": g, "below_eps": b})
        f = impact.judge_impact(None, found, [0], np.array([0]))
        assert f.severity == "info" and not f.causes
        head = "signal far below; but under AdamW they learn: update/weight 0.002 vs 0.004 for the rest"
        assert f.summary == head + tail


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_network_where_every_layer_barely_moves_keeps_its_vanishing_finding(seed):
    """Tiny init (the lab's `init` experiment, tanh small): at the first step every layer's update/weight
    ratio is ~1e-23, so 'the affected layers move as much as the rest' is no evidence that they learn:
    the vanishing stays critical (it was demoted to info)."""
    spec = gd.NetSpec(depth=20, width=128, in_shape=(64,), activation="tanh", init="small", dtype="float64")
    model = gd.build(spec, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 64, generator=g, dtype=torch.float64), torch.randint(0, 10, (64,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    trace = _train(model, [(x, y)] * 3, optimizer=opt)
    d = gd.diagnose(trace.select([0]))
    (f,) = [f for f in d.findings if f.kind == "vanishing"]
    assert f.severity == "critical", str(d)
    impact = f.evidence["impact"]
    assert impact["tiny"] and not impact["learns"] and impact["update_ratio"] < 1e-6
    assert impact["relative_update"] > 0.01  # the relative test alone would have called it learning
    assert "would not change their weights" in f.summary and f.causes[0].name == "init_too_small"


def test_a_selection_of_steps_before_a_divergence_is_not_non_finite():
    """trace.select keeps the every-step non-finite record only up to its last step: the verdict at
    initialisation of a run that diverges at step 13 has no non_finite finding."""
    trace = _diverging_trace()
    assert "non_finite" not in gd.diagnose(trace.select([0])).kinds()
    assert trace.select([0]).meta["nonfinite"]["first_step"] is None
    assert trace.meta["nonfinite"]["first_step"] == 13  # the whole run keeps it
    assert "non_finite" not in gd.diagnose(trace.select([0, 1])).kinds()  # steps 0 and 10: before step 13
    assert "non_finite" in gd.diagnose(trace).kinds()
