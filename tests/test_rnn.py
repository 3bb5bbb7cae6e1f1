"""Recurrent layers: the error signal per time step, its Trace series, the through-time rule, lab `rnn`."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import graddoctor
from graddoctor.cli import main
from graddoctor.diagnose.signals import time_profiles
from graddoctor.diagnose.through_time import KINDS, decades
from graddoctor.lab import rnn as lab_rnn
from graddoctor.probe.trace import Trace


class Seq(nn.Module):
    """A recurrent layer read out at its last step (a sequence-to-one model)."""

    def __init__(self, cell=nn.RNN, hidden=12, batch_first=True, **kw):
        super().__init__()
        self.rnn = cell(3, hidden, batch_first=batch_first, **kw)
        self.head = nn.Linear(hidden * (2 if kw.get("bidirectional") else 1), 1)
        self.batch_first = batch_first

    def forward(self, x):
        out, _ = self.rnn(x)
        last = out[:, -1] if self.batch_first and out.dim() == 3 else out[-1]  # (T, H) when unbatched
        return self.head(last)


def one_step(model, x, y):
    with graddoctor.watch(model) as probe:
        loss = (model(x) - y).square().mean()
        loss.backward()
        probe.step(loss)
    return probe


def oracle(model, x, y, time_dim):
    """Per-sample ||dL/dx_t|| and ||dL/dh_t|| by plain autograd."""
    xl = x.clone().requires_grad_()
    captured = {}
    h = model.rnn.register_forward_hook(lambda m, a, out: captured.update(y=out[0]))  # returns None
    loss = (model(xl) - y).square().mean()
    h.remove()
    gx, gy = torch.autograd.grad(loss, [xl, captured["y"]])
    batch = x.shape[1 - time_dim] if x.dim() == 3 else 1
    per_t = lambda g: (g.movedim(time_dim, 0).reshape(g.shape[time_dim], -1).double().square().sum(1) / batch).sqrt()
    return per_t(gx).numpy(), per_t(gy).numpy()


@pytest.mark.parametrize("cell", [nn.RNN, nn.LSTM, nn.GRU], ids=["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layout", ["batch_first", "time_first", "unbatched"])
def test_time_series_match_autograd(cell, layout):
    torch.manual_seed(0)
    model = Seq(cell, batch_first=layout != "time_first")
    shape = {"batch_first": (5, 9, 3), "time_first": (9, 5, 3), "unbatched": (9, 3)}[layout]
    x, y = torch.randn(*shape), torch.randn(1 if layout == "unbatched" else 5, 1)
    if layout == "unbatched":
        y = y[0]
    probe = one_step(model, x, y)
    trace = probe.trace
    want_in, want_out = oracle(model, x, y, 1 if layout == "batch_first" else 0)
    for name, want in (("time_input_grad", want_in), ("time_output_grad", want_out)):
        steps, got = trace.series.get(name, "rnn")
        assert steps.tolist() == [0] and got.shape == (1, 9)
        np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-12, err_msg=name)
    assert want_out[:-1].max() == 0 < want_out[-1]  # the output's gradient never sees the recurrence
    assert want_in[0] > 0  # the input's does
    # the substituted input changes nothing else: the layer fed by raw data has no input gradient
    assert math.isnan(trace["input_grad_rms"][0, 0])
    assert not x.requires_grad
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_series_survive_save_load_select_and_old_files_load(tmp_path):
    torch.manual_seed(0)
    model = Seq(nn.LSTM)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 7, 3), torch.randn(4, 1)
    with graddoctor.watch(model, optimizer=opt, every=2) as probe:
        for _ in range(5):
            loss = (model(x) - y).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            probe.step(loss)
    trace = probe.trace
    steps, values = trace.series.get("time_input_grad", "rnn")
    assert steps.tolist() == trace.steps.tolist() == [0, 2, 4]
    back = Trace.load(trace.save(tmp_path / "t.npz"))
    np.testing.assert_array_equal(back.series.get("time_input_grad", "rnn")[1], values)
    assert back.meta["recurrent"] == {"rnn": {"type": "LSTM", "bidirectional": False, "batch_first": True}}
    assert back.select([1]).series.get("time_input_grad", "rnn")[0].tolist() == [2]
    # a file written before series existed (no 'series' in its header) still loads
    with np.load(tmp_path / "t.npz") as z:
        header = json.loads(str(z["header"]))
        header.pop("series")
        np.savez(tmp_path / "old.npz", header=np.array(json.dumps(header)), steps=z["steps"], layer=z["layer"],
                 step=z["step"])
    old = Trace.load(tmp_path / "old.npz")
    assert len(old) == 3 and len(old.series) == 0


def identity_rnn(gain: float, length: int = 40) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A ReLU RNN with W_hh = gain * I and positive inputs: the gradient scales by `gain` per step."""
    torch.manual_seed(0)
    model = Seq(nn.RNN, hidden=8, nonlinearity="relu")
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(gain * torch.eye(8))
        model.rnn.weight_ih_l0.uniform_(0.05, 0.1)
        model.rnn.bias_hh_l0.zero_()
        model.rnn.bias_ih_l0.zero_()
    return model, torch.rand(6, length, 3), torch.randn(6, 1)


def test_planted_time_pathologies_are_found_and_a_healthy_rnn_is_not():
    cases = {"vanishing": identity_rnn(0.8), "exploding": identity_rnn(1.2), "healthy": identity_rnn(1.0)}
    found = {}
    for name, (model, x, y) in cases.items():
        found[name] = graddoctor.checkup(model, x, y)
    vanish = [f for f in found["vanishing"].findings if f.kind == KINDS[0]]
    assert len(vanish) == 1 and vanish[0].layers == ("rnn",)
    ev = vanish[0].evidence
    # 0.8 per step over the span between the first and last 4 steps (36 steps): 36 log10(0.8) = -3.5
    assert ev["time_steps"] == 40 and ev["decades"] == pytest.approx(36 * math.log10(0.8), abs=0.2)
    assert ev["per_step_factor"] == pytest.approx(0.8, abs=0.02)
    assert vanish[0].causes[0].name == "recurrent_chain" and "LSTM" in vanish[0].causes[0].explanation
    explode = [f for f in found["exploding"].findings if f.kind == KINDS[1]]
    assert len(explode) == 1 and explode[0].evidence["decades"] > 2.5
    assert explode[0].remedies == ("clip_gradients",)
    assert not set(KINDS) & found["healthy"].kinds()


def test_through_time_needs_a_real_sequence_and_skips_bidirectional():
    assert math.isnan(decades(np.array([1.0, 0.1, 0.01]))[0])  # T=3: below MIN_TIME_STEPS
    assert decades(np.array([1e-50, 1.0, 1.0, 1.0]))[0] == pytest.approx(-45.0)  # underflow floors at 1e-45
    torch.manual_seed(0)
    model = Seq(nn.LSTM, bidirectional=True)
    probe = one_step(model, torch.randn(4, 30, 3), torch.randn(4, 1))
    assert probe.trace.series.layers("time_input_grad") == ["rnn"]
    assert time_profiles(probe.trace) == {}  # recorded, not judged


def test_lab_rnn_quick_on_three_seeds_and_from_the_command_line(tmp_path, capsys):
    store = tmp_path / "runs.db"
    runs, conclusion = lab_rnn.run(store, quick=True, progress_bar=False)
    assert sorted((r.seed, r.cell, r.length) for r in runs) == [
        (s, c, t) for s in (0, 1, 2) for c in ("lstm", "rnn") for t in (10, 30)]
    for seed in (0, 1, 2):
        by = {(r.cell, r.length): r for r in runs if r.seed == seed}
        # at init both cells lose more with T (Bengio et al. 1994): 3.1-3.7 (rnn), 3.5-4.4 (lstm) decades more
        for cell in ("rnn", "lstm"):
            assert by[(cell, 30)].decades_init < by[(cell, 10)].decades_init - 2, (seed, cell)
        # ... the tanh RNN stays vanished at T=30 (-4.5 to -3.4) and does not learn it (MSE 0.15-0.18, baseline
        # 0.167); the LSTM learns both (T=30: MSE 0.0010-0.0015)
        assert by[("rnn", 30)].decades_trained < -2 and not by[("rnn", 30)].learned, seed
        assert "vanishing_through_time" in by[("rnn", 30)].verdict_trained
        assert by[("lstm", 10)].learned and by[("lstm", 30)].test_mse < 0.2 * lab_rnn.BASELINE_MSE, seed
    assert conclusion.holds and (conclusion.held_on, conclusion.seeds) == (3, 3)
    with graddoctor.RunStore(store) as st:
        stored = [r for r in st.runs("lab") if r.config.get("group") == "rnn"]
        assert len(stored) == 12
        meta = st.load_trace(stored[1].id).meta
        assert meta["decades_init"] == pytest.approx(runs[1].decades_init)
    # the command reads the same 12 runs back (--resume: nothing trained) and writes the table
    assert main(["lab", "run", "rnn", "--quick", "--resume", "--out", str(tmp_path), "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "12 runs" in out and "Supported on 3/3 seeds" in out
    md = (tmp_path / "rnn.md").read_text()
    assert lab_rnn.table(runs)[1][3][4] in md  # the test MSE range of (lstm, T=30), as computed here
    with graddoctor.RunStore(store) as st:
        assert len([r for r in st.runs("lab") if r.config.get("group") == "rnn"]) == 12
